// Flex Consumption plan + the function app (custom handler: one Go executable named "handler"),
// its app settings (every setting the code reads that an administrator may tune; see
// shared/config.Known and the drift test in handlers/infra_drift_test.go). The store's host key is
// not here: host keys are written through the running host, so the azd postdeploy hook creates it
// once the code is deployed (infra/hooks/postdeploy.sh).

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

@description('Table service endpoint of the storage account (its sync-state table is there).')
param storageTableEndpoint string

@description('Deployment container name.')
param deploymentContainerName string

@description('Service Bus namespace host name, e.g. nopsync.servicebus.windows.net.')
param serviceBusFullyQualifiedNamespace string

@description('Key Vault URL, e.g. https://kv-xyz.vault.azure.net/.')
param keyVaultUrl string

@description('Application Insights connection string.')
param applicationInsightsConnectionString string

// 2048 MB is the Flex Consumption default size (1 vCPU); 512 MB is the 0.25 vCPU size.
@description('Flex Consumption instance memory (MB).')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

// Flex Consumption's lowest allowed cap is 40 in most regions, and it applies per function group:
// each Service Bus-triggered function scales on its own. So it does not bound the load on
// Dataverse; the app does (its client keeps Dataverse's per-user limits and honours Retry-After).
// https://learn.microsoft.com/azure/azure-functions/flex-consumption-plan
@description('Most instances each function group may scale out to (at least 40).')
@minValue(40)
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

// Every app setting of the site. The drift test reads the keys of this object: keep it a single
// object literal.
var appSettings = {
  // Host storage with the managed identity (no shared keys). accountName works in the public cloud;
  // sovereign clouds need __blobServiceUri/__queueServiceUri/__tableServiceUri instead. The app
  // reads its sync-state table at __tableServiceUri, the account's own endpoint in any cloud.
  AzureWebJobsStorage__accountName: storageAccountName
  AzureWebJobsStorage__tableServiceUri: storageTableEndpoint
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
// Flex Consumption has no FTP, so there is no ftp policy (nor siteConfig.ftpsState, which Flex
// rejects with ARM error 51021).
resource scmCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

output name string = site.name
output id string = site.id
output defaultHostName string = site.properties.defaultHostName
output uri string = 'https://${site.properties.defaultHostName}'
