// Role assignments of the app's user-assigned managed identity: data-plane roles only, each on the
// narrowest scope that works. No control-plane role (Owner, Contributor, ...) is ever granted.
//
// | what the code / host does                                      | role                           | scope            |
// |----------------------------------------------------------------|--------------------------------|------------------|
// | send events, receive (triggers, sessions), peek/replay the DLQ,| Azure Service Bus Data Owner   | each queue       |
// | read queue counts (admin GetQueueRuntimeProperties = Manage)   |                                |                  |
// | host storage: keys, timer/scale leases, deployment package     | Storage Blob Data Owner        | storage account  |
// | sync-state table (+ host diagnostic events)                    | Storage Table Data Contributor | storage account  |
// | read the client and webhook secrets (+ their expiry)           | Key Vault Secrets User         | key vault        |
// | send telemetry to Application Insights with local auth off     | Monitoring Metrics Publisher   | App Insights     |
//
// Why Data Owner on Service Bus rather than Data Sender + Data Receiver: the status page reads active
// and dead-lettered counts with the administration client, which needs the Manage claim, and only
// Data Owner carries Manage among the built-in roles; the Flex scale controller also needs Manage
// to scale on queue length (without it it falls back to the first message's enqueued time). To keep
// that Manage right away from the rest of the namespace it is granted on the three queues only, not
// on the namespace. Data Owner includes send and listen, so Sender and Receiver would add nothing.
// The handlers' drift test (handlers/infra_drift_test.go) holds the same table and fails when the
// two disagree.

@description('Principal (object) id of the app\'s user-assigned managed identity.')
param principalId string

@description('Storage account of the app.')
param storageAccountName string

@description('Service Bus namespace of the app.')
param serviceBusNamespaceName string

@description('Queues the app sends to and receives from.')
param queueNames array

@description('Key Vault holding the app\'s secrets.')
param keyVaultName string

@description('Application Insights component of the app.')
param applicationInsightsName string

var roleIds = {
  serviceBusDataOwner: '090c5cfd-751d-490a-894a-3ce6f1109419'
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource serviceBus 'Microsoft.ServiceBus/namespaces@2024-01-01' existing = {
  name: serviceBusNamespaceName
}

resource queues 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' existing = [
  for queueName in queueNames: {
    parent: serviceBus
    name: queueName
  }
]

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource queueDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for (queueName, i) in queueNames: {
    name: guid(queues[i].id, principalId, roleIds.serviceBusDataOwner)
    scope: queues[i]
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.serviceBusDataOwner)
      principalId: principalId
      principalType: 'ServicePrincipal'
    }
  }
]

resource blobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, roleIds.storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageBlobDataOwner)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource tableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, roleIds.storageTableDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageTableDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, principalId, roleIds.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.keyVaultSecretsUser)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, principalId, roleIds.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.monitoringMetricsPublisher)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
