// The app's user-assigned managed identity: one identity for the host (storage, Service Bus
// triggers, deployment) and the Go code (azidentity with AZURE_CLIENT_ID).

@description('Location of the resource.')
param location string

@description('Tags put on the resource.')
param tags object

@description('Identity name.')
param name string

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output principalId string = identity.properties.principalId
output clientId string = identity.properties.clientId
