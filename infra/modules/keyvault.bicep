// Key Vault (Azure RBAC, soft delete, purge protection) holding the Dataverse client secret and the
// webhook signature secret. A secret given as an empty parameter is not created, so an
// administrator can set it in the vault later without a redeployment overwriting it.

@description('Location of the resources.')
param location string

@description('Tags put on every resource.')
param tags object

@description('Key Vault name (3-24 letters, digits and hyphens).')
@minLength(3)
@maxLength(24)
param name string

@description('Days a deleted vault or secret can be recovered (7-90).')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

@description('Name of the Dataverse client secret in the vault (DATAVERSE_CLIENT_SECRET_NAME).')
param dataverseClientSecretName string

@description('Name of the webhook signature secret in the vault (WEBHOOK_SECRET_NAME).')
param webhookSecretName string

@secure()
@description('Dataverse client secret value. Empty: the secret is not created here; set it in the vault.')
param dataverseClientSecret string = ''

@description('Expiry of the client secret as set in Entra ID (ISO 8601, e.g. 2027-05-01T00:00:00Z). Feeds the status page warning. Empty: no expiry recorded.')
param dataverseClientSecretExpiresOn string = ''

@secure()
@description('Webhook signature secret value. Empty: the secret is not created here; set it in the vault.')
param webhookSecret string = ''

// The epoch argument is always a valid date so the expression is safe however ARM evaluates the
// branches; exp is only set when an expiry was given.
var expiresOnOrEpoch = empty(dataverseClientSecretExpiresOn) ? '1970-01-01T00:00:00Z' : dataverseClientSecretExpiresOn
var clientSecretAttributes = empty(dataverseClientSecretExpiresOn) ? { enabled: true } : { enabled: true, exp: dateTimeToEpoch(expiresOnOrEpoch) }

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource dataverseClientSecretResource 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(dataverseClientSecret)) {
  parent: vault
  name: dataverseClientSecretName
  properties: {
    value: dataverseClientSecret
    contentType: 'Dataverse client secret (Entra ID app registration)'
    attributes: clientSecretAttributes
  }
}

@description('Name of the store database\'s connection string in the vault (NOP_DB_CONNECTION_SECRET_NAME).')
param nopDbConnectionSecretName string = 'nop-db-connection'

@secure()
@description('Connection string of the store\'s database for the store reader. Empty: not created (set it in the vault later).')
param nopDbConnection string = ''

resource nopDbConnectionResource 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(nopDbConnection)) {
  parent: vault
  name: nopDbConnectionSecretName
  properties: {
    value: nopDbConnection
    contentType: 'nopCommerce database connection string (read-only login)'
    attributes: {
      enabled: true
    }
  }
}

resource webhookSecretResource 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(webhookSecret)) {
  parent: vault
  name: webhookSecretName
  properties: {
    value: webhookSecret
    contentType: 'nopCommerce webhook signature secret (HMAC-SHA256)'
    attributes: {
      enabled: true
    }
  }
}

output name string = vault.name
output id string = vault.id
output vaultUri string = vault.properties.vaultUri
