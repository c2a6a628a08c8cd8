// nopCommerce -> Dynamics 365 sync: everything the app runs on, in one deployment.
// `azd up` provisions this (parameters from main.parameters.json) and deploys the code.
// Without azd: az deployment sub create -l <region> -f infra/main.bicep -p environmentName=... location=... (see infra/README.md).
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Environment name (azd: AZURE_ENV_NAME). Names the resource group and seeds unique resource names.')
param environmentName string

@minLength(1)
@description('Region for every resource. It must offer the Flex Consumption plan (az functionapp list-flexconsumption-locations).')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Resource group name. Empty: rg-<environmentName>.')
param resourceGroupName string = ''

// ---------------------------------------------------------------------------------------------
// Dynamics 365 / Dataverse (infra/README.md, "Register the app in Entra ID and Dataverse")
// ---------------------------------------------------------------------------------------------

@description('Dataverse environment URL, e.g. https://contoso.crm.dynamics.com (DATAVERSE_URL).')
param dataverseUrl string

@description('Directory (tenant) id of the app registration (DATAVERSE_TENANT_ID). Empty: this subscription\'s tenant.')
param dataverseTenantId string = ''

@description('Application (client) id of the app registration (DATAVERSE_CLIENT_ID).')
param dataverseClientId string

// Secret values are one-shot: the deployment that carries one stores it in Key Vault, then azd's
// postprovision hook (infra/hooks/postprovision.sh) empties its variable, so a later provision passes
// '' and never writes an older value over one rotated in the vault.
@secure()
@description('Client secret of the app registration, stored in Key Vault once (see infra/README.md, section 4). Empty: not stored now; an administrator sets it in the vault.')
param dataverseClientSecret string = ''

@description('When the client secret expires in Entra ID (ISO 8601, e.g. 2027-05-01T00:00:00Z); recorded on the Key Vault secret for the status warning.')
param dataverseClientSecretExpiresOn string = ''

@secure()
@description('Webhook signature secret shared with the store, stored in Key Vault once. Empty: not stored now; an administrator sets it in the vault.')
param webhookSecret string = ''

@description('Name of the client secret in Key Vault (DATAVERSE_CLIENT_SECRET_NAME).')
param dataverseClientSecretName string = 'dataverse-client-secret'

@description('Name of the webhook secret in Key Vault (WEBHOOK_SECRET_NAME).')
param webhookSecretName string = 'webhook-secret'

@secure()
@description('Connection string of the store\'s nopCommerce database for the store reader (a read-only login; see infra/README.md), stored in Key Vault once. Empty: not stored now; an administrator sets it in the vault, or the reader stays off.')
param nopDbConnection string = ''

@description('Name of the store database\'s connection string in Key Vault (NOP_DB_CONNECTION_SECRET_NAME).')
param nopDbConnectionSecretName string = 'nop-db-connection'

@description('Entra authority host for sovereign or private clouds, e.g. https://login.microsoftonline.us/ (AZURE_AUTHORITY_HOST). Empty: public cloud.')
param azureAuthorityHost string = ''

// ---------------------------------------------------------------------------------------------
// Sync behaviour (tunable later in the portal: function app > Settings > Environment variables)
// ---------------------------------------------------------------------------------------------

@minLength(3)
@maxLength(3)
@description('The store\'s primary currency, ISO 4217 (STORE_CURRENCY_CODE), e.g. USD.')
param storeCurrencyCode string

@allowed([
  'true'
  'false'
])
@description('Run auto synchronization (AUTO_SYNC_ENABLED).')
param autoSyncEnabled string = 'true'

@description('Auto synchronization period in minutes, 1-10080 (AUTO_SYNC_PERIOD_MINUTES).')
param autoSyncPeriodMinutes string = '60'

@allowed([
  'deactivate'
  'delete'
  'ignore'
])
@description('What a delete in the store does in Dynamics 365 (DELETE_POLICY).')
param deletePolicy string = 'deactivate'

@description('Price list for synced products (PRICE_LIST_NAME). Empty: "nopCommerce <currency>".')
param priceListName string = ''

@description('Unit group of synced products (UNIT_GROUP_NAME).')
param unitGroupName string = 'Default Unit'

@allowed([
  'true'
  'false'
])
@description('Copy the first product picture into Dynamics 365 (SYNC_IMAGES).')
param syncImages string = 'false'

@allowed([
  'true'
  'false'
])
@description('false makes this deployment read-only towards Dynamics 365, e.g. a copy or test (DATAVERSE_WRITES_ENABLED).')
param dataverseWritesEnabled string = 'true'

@description('Rows per bulk write request to Dynamics 365, 1-1000 (DATAVERSE_BULK_SIZE); empty = 100.')
param dataverseBulkSize string = '100'

@allowed([
  ''
  'sqlserver'
  'mysql'
  'postgresql'
])
@description('Engine of the store\'s nopCommerce database for the store reader (NOP_DB_PROVIDER). Empty: the reader is off.')
param nopDbProvider string = ''

@allowed([
  'true'
  'false'
])
@description('Azure SQL with the app\'s managed identity instead of a password (NOP_DB_MANAGED_IDENTITY).')
param nopDbManagedIdentity string = 'false'

@description('The nopCommerce store whose orders the reader reads (STORE_ID).')
param storeId string = '1'

@description('The store\'s public URL, for picture URLs (STORE_URL). Empty: no pictures from the reader.')
param storeUrl string = ''

@description('Table holding the sync state (SYNC_STATE_TABLE).')
param syncStateTableName string = 'syncstate'

// ---------------------------------------------------------------------------------------------
// Hosting
// ---------------------------------------------------------------------------------------------

// Applies per function group (each Service Bus function scales on its own); 40 is the lowest
// Flex Consumption allows in most regions. The app, not this cap, keeps Dataverse's load in bounds.
@description('Most instances each function group may scale out to (at least 40).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Flex Consumption instance memory in MB (2048 is the default size; 512 the 0.25 vCPU one).')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

// ---------------------------------------------------------------------------------------------
// Alerts (off unless an address is given; infra/README.md, "Alerts")
// ---------------------------------------------------------------------------------------------

@description('Email address that receives the alerts (dead-lettered messages, handler errors). Empty: no alert rules are deployed.')
param alertEmail string = ''

@description('Handler error lines (Application Insights traces with severityLevel >= 3) in 15 minutes above which the error alert fires.')
@minValue(0)
param errorAlertThreshold int = 10

@description('Duplicate detection window of the queues (ISO 8601 duration).')
param duplicateDetectionWindow string = 'PT10M'

@description('Tags added to every resource.')
param extraTags object = {}

var tags = union(extraTags, { 'azd-env-name': environmentName, application: 'nopsync' })
var token = toLower(uniqueString(subscription().id, environmentName, location))
var functionAppName = 'func-nopsync-${token}'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : 'rg-${environmentName}'
  location: location
  tags: tags
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    location: location
    tags: tags
    name: 'id-nopsync-${token}'
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    location: location
    tags: tags
    logAnalyticsName: 'log-nopsync-${token}'
    applicationInsightsName: 'appi-nopsync-${token}'
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    location: location
    tags: tags
    name: 'st${token}'
    deploymentContainerName: 'app-package-${take(token, 8)}'
    syncStateTableName: syncStateTableName
  }
}

module serviceBus 'modules/servicebus.bicep' = {
  name: 'servicebus'
  scope: rg
  params: {
    location: location
    tags: tags
    name: 'sb-nopsync-${token}'
    duplicateDetectionWindow: duplicateDetectionWindow
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    location: location
    tags: tags
    name: 'kv-${token}'
    dataverseClientSecretName: dataverseClientSecretName
    webhookSecretName: webhookSecretName
    dataverseClientSecret: dataverseClientSecret
    dataverseClientSecretExpiresOn: dataverseClientSecretExpiresOn
    webhookSecret: webhookSecret
    nopDbConnectionSecretName: nopDbConnectionSecretName
    nopDbConnection: nopDbConnection
  }
}

module roles 'modules/roles.bicep' = {
  name: 'roles'
  scope: rg
  params: {
    principalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    serviceBusNamespaceName: serviceBus.outputs.name
    queueNames: serviceBus.outputs.queueNames
    keyVaultName: keyVault.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  scope: rg
  params: {
    location: location
    tags: tags
    name: functionAppName
    planName: 'plan-nopsync-${token}'
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    storageBlobEndpoint: storage.outputs.blobEndpoint
    storageTableEndpoint: storage.outputs.tableEndpoint
    deploymentContainerName: storage.outputs.deploymentContainerName
    serviceBusFullyQualifiedNamespace: serviceBus.outputs.fullyQualifiedNamespace
    keyVaultUrl: keyVault.outputs.vaultUri
    applicationInsightsConnectionString: monitoring.outputs.connectionString
    maximumInstanceCount: maximumInstanceCount
    dataverseUrl: dataverseUrl
    dataverseTenantId: !empty(dataverseTenantId) ? dataverseTenantId : tenant().tenantId
    dataverseClientId: dataverseClientId
    dataverseClientSecretName: dataverseClientSecretName
    webhookSecretName: webhookSecretName
    storeCurrencyCode: toUpper(storeCurrencyCode)
    autoSyncEnabled: autoSyncEnabled
    autoSyncPeriodMinutes: autoSyncPeriodMinutes
    deletePolicy: deletePolicy
    priceListName: priceListName
    unitGroupName: unitGroupName
    syncImages: syncImages
    dataverseWritesEnabled: dataverseWritesEnabled
    dataverseBulkSize: dataverseBulkSize
    syncStateTableName: storage.outputs.syncStateTableName
    azureAuthorityHost: azureAuthorityHost
    nopDbProvider: nopDbProvider
    nopDbConnectionSecretName: nopDbConnectionSecretName
    nopDbManagedIdentity: nopDbManagedIdentity
    storeId: storeId
    storeUrl: storeUrl
    instanceMemoryMB: instanceMemoryMB
  }
  // The identity must hold its roles before the host first starts (host storage, deployment
  // container, Key Vault); otherwise the first start fails until the assignments propagate.
  dependsOn: [
    roles
  ]
}

module alerts 'modules/alerts.bicep' = if (!empty(alertEmail)) {
  name: 'alerts'
  scope: rg
  params: {
    tags: tags
    namePrefix: 'nopsync-${token}'
    alertEmail: alertEmail
    serviceBusNamespaceName: serviceBus.outputs.name
    queueNames: serviceBus.outputs.queueNames
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    location: location
    errorAlertThreshold: errorAlertThreshold
  }
}

// --- outputs: azd stores these in .azure/<env>/.env; none is a secret ---
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_NAME string = functionApp.outputs.name
output SERVICE_API_NAME string = functionApp.outputs.name
output SERVICE_API_URI string = functionApp.outputs.uri
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output AZURE_KEY_VAULT_URL string = keyVault.outputs.vaultUri
output AZURE_SERVICEBUS_NAMESPACE string = serviceBus.outputs.fullyQualifiedNamespace
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_MANAGED_IDENTITY_CLIENT_ID string = identity.outputs.clientId
@description('Where the store sends events: replace {entity} with customer, product or order; send the "nopcommerce" host key in the x-functions-key header.')
output EVENTS_URL string = '${functionApp.outputs.uri}/api/events/{entity}'
@description('The function app\'s Environment variables blade in the Azure portal, where the settings are tuned.')
output SETTINGS_PORTAL_URL string = '${environment().portal}/#@${tenant().tenantId}/resource${functionApp.outputs.id}/environmentVariablesAppSettings'
