// Service Bus namespace (Standard: sessions and duplicate detection need it; Basic has neither)
// with one queue per entity. Local (SAS) auth is off: the app sends and receives with its managed
// identity.

@description('Location of the resources.')
param location string

@description('Tags put on every resource.')
param tags object

@description('Service Bus namespace name.')
param name string

@description('Queues, two per entity (single events; import chunks on -bulk, so live events never wait behind an import); each function.json Service Bus trigger binds one of them.')
param queueNames array = [
  'customers'
  'products'
  'orders'
  'customers-bulk'
  'products-bulk'
  'orders-bulk'
]

// Duplicate detection drops a message whose MessageId (= the nopCommerce event id) was seen within
// this window. 10 minutes covers the store re-sending a request whose 202 it did not receive
// (timeouts, connection resets) and a re-run of a failed import page. It is kept short on purpose:
// the engine is idempotent anyway (it keeps the last applied order key per entity), and a
// dead-letter replay resubmits messages with their original ids, which the broker would silently
// drop while they are still inside the window. Changeable later; requiresDuplicateDetection is not.
@description('Duplicate detection window (ISO 8601 duration, 20 seconds to 7 days).')
param duplicateDetectionWindow string = 'PT10M'

// Long enough to ride out a Dataverse or app outage over a long weekend; an expired message goes
// to the dead-letter queue (deadLetteringOnMessageExpiration), never silently away.
@description('Time a message may wait in a queue before it is dead-lettered (ISO 8601 duration).')
param messageTimeToLive string = 'P14D'

@description('Deliveries before Service Bus dead-letters a message (reason MaxDeliveryCountExceeded, a fixed text; the app keeps why it failed in its state store). At least 3: from its third delivery on, a failing message is completed once a delayed copy is scheduled.')
@minValue(3)
@maxValue(2000)
param maxDeliveryCount int = 10

resource namespace 'Microsoft.ServiceBus/namespaces@2024-01-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: 'Standard'
    tier: 'Standard'
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

// requiresSession and requiresDuplicateDetection cannot be changed once a queue exists.
resource queues 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = [
  for queueName in queueNames: {
    parent: namespace
    name: queueName
    properties: {
      requiresSession: true
      requiresDuplicateDetection: true
      duplicateDetectionHistoryTimeWindow: duplicateDetectionWindow
      deadLetteringOnMessageExpiration: true
      maxDeliveryCount: maxDeliveryCount
      lockDuration: 'PT5M'
      defaultMessageTimeToLive: messageTimeToLive
      enableBatchedOperations: true
      enablePartitioning: false
      maxSizeInMegabytes: 1024
    }
  }
]

output name string = namespace.name
output id string = namespace.id
// Host name only (e.g. nopsync.servicebus.windows.net), taken from the endpoint so sovereign
// clouds get their own suffix.
output fullyQualifiedNamespace string = split(replace(namespace.properties.serviceBusEndpoint, 'https://', ''), ':')[0]
output queueNames array = [for (queueName, i) in queueNames: queues[i].name]
