// Flex Consumption plan + the function app (custom handler: one Go executable named "handler"),
// its app settings (every setting the code reads that an administrator may tune; see
// shared/config.Known and the drift test in handlers/infra_drift_test.go), and the named host
// key the store sends in x-functions-key.

@description('Location of the resources.')
param location string

@description('Tags put on every resource.')
param tags object

@description('Function app name (also its host name: <name>.azurewebsites.net).')
param name string

@description('Flex Consumption plan name.')
param planName string

@description('azd service name the app is tagged with (azure.yaml services.<name>).')
param serviceName string = 'api'

@description('Resource id of the app\'s user-assigned managed identity.')
param identityId string

@description('Client id of the app\'s user-assigned managed identity.')
param identityClientId string

@description('Storage account name (AzureWebJobsStorage, deployment container, sync state).')
param storageAccountName string

@description('Blob endpoint of the storage account.')
param storageBlobEndpoint string

@description('Deployment container name.')
param deploymentContainerName string

@description('Service Bus namespace host name, e.g. nopsync.servicebus.windows.net.')
param serviceBusFullyQualifiedNamespace string

@description('Key Vault URL, e.g. https://kv-xyz.vault.azure.net/.')
param keyVaultUrl string

@description('Application Insights connection string.')
param applicationInsightsConnectionString string

@description('Flex Consumption instance memory (MB).')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 512

// Each instance runs up to host.json maxConcurrentSessions per queue against Dataverse, whose
// service protection limits are per user (52 concurrent requests, 6000 requests / 5 min): a small
// ceiling keeps the app's own throttling rare.
@description('Most instances the app may scale out to.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

// --- settings an administrator chooses (see docs/operations.md) ---
param dataverseUrl string
param dataverseTenantId string
param dataverseClientId string
param dataverseClientSecretName string
param webhookSecretName string
param storeCurrencyCode string
param autoSyncEnabled string
param autoSyncPeriodMinutes string
param deletePolicy string
param priceListName string
param unitGroupName string
param syncImages string
param dataverseWritesEnabled string
param dataverseBulkSize string
param syncStateTableName string
param azureAuthorityHost string
param nopDbProvider string
param nopDbConnectionSecretName string
param nopDbManagedIdentity string
param storeId string
param storeUrl string

@secure()
@description('Value of the host key named nopcommerce that the store sends in x-functions-key (at least 32 letters and digits).')
param storeFunctionKey string

@description('Create the nopcommerce host key. Host keys are written through the running Functions host, so this needs the code deployed (see main.bicep).')
param createStoreFunctionKey bool = false

// Every app setting of the site. The drift test reads the keys of this object: keep it a single
// object literal.
var appSettings = {
  // Host storage with the managed identity (no shared keys). accountName works in the public cloud;
  // sovereign clouds need __blobServiceUri/__queueServiceUri/__tableServiceUri instead.
  AzureWebJobsStorage__accountName: storageAccountName
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  // The Service Bus triggers' connection ("connection": "ServiceBusConnection" in function.json);
  // the Go code sends and reads counts with the same namespace.
  ServiceBusConnection__fullyQualifiedNamespace: serviceBusFullyQualifiedNamespace
  ServiceBusConnection__credential: 'managedidentity'
  ServiceBusConnection__clientId: identityClientId
  // azidentity's ManagedIdentityCredential / DefaultAzureCredential pick the UAMI with this.
  AZURE_CLIENT_ID: identityClientId
  AZURE_AUTHORITY_HOST: azureAuthorityHost
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  DATAVERSE_URL: dataverseUrl
  DATAVERSE_TENANT_ID: dataverseTenantId
  DATAVERSE_CLIENT_ID: dataverseClientId
  KEY_VAULT_URL: keyVaultUrl
  DATAVERSE_CLIENT_SECRET_NAME: dataverseClientSecretName
  WEBHOOK_SECRET_NAME: webhookSecretName
  STORE_CURRENCY_CODE: storeCurrencyCode
  AUTO_SYNC_ENABLED: autoSyncEnabled
  AUTO_SYNC_PERIOD_MINUTES: autoSyncPeriodMinutes
  DELETE_POLICY: deletePolicy
  PRICE_LIST_NAME: priceListName
  UNIT_GROUP_NAME: unitGroupName
  SYNC_IMAGES: syncImages
  DATAVERSE_WRITES_ENABLED: dataverseWritesEnabled
  DATAVERSE_BULK_SIZE: dataverseBulkSize
  SYNC_STATE_TABLE: syncStateTableName
  NOP_DB_PROVIDER: nopDbProvider
  NOP_DB_CONNECTION_SECRET_NAME: nopDbConnectionSecretName
  NOP_DB_MANAGED_IDENTITY: nopDbManagedIdentity
  STORE_ID: storeId
  STORE_URL: storeUrl
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': serviceName })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    publicNetworkAccess: 'Enabled'
    // Key Vault references (if an administrator adds any) resolve with the UAMI; there is no
    // system-assigned identity.
    keyVaultReferenceIdentity: identityId
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storageBlobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'custom'
        version: '1.0'
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      // Set on the site itself so the settings exist when the host first starts.
      appSettings: [
        for setting in items(appSettings): {
          name: setting.key
          value: setting.value
        }
      ]
    }
  }
}

// No publishing with user names and passwords: deployments use Entra tokens (azd, Core Tools, az).
resource ftpCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

// A named host key for the store, so it can be rotated on its own (docs: "Function access keys" in
// functions-infrastructure-as-code). The value comes from a parameter (azd generates and keeps it
// per environment), so re-provisioning does not change it; a generated value would change the
// store's key on every deployment.
resource storeKey 'Microsoft.Web/sites/host/functionKeys@2022-09-01' = if (createStoreFunctionKey) {
  name: '${site.name}/default/nopcommerce'
  properties: {
    name: 'nopcommerce'
    value: storeFunctionKey
  }
  dependsOn: [
    site
  ]
}

output name string = site.name
output id string = site.id
output defaultHostName string = site.properties.defaultHostName
output uri string = 'https://${site.properties.defaultHostName}'
