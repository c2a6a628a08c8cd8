#!/usr/bin/env bash
# azd postprovision hook: makes the secret parameters one-shot.
#
# azd passes every parameter whose environment variable is set, on every `azd provision`. A secret
# given once (azd env set DATAVERSE_CLIENT_SECRET ...) would therefore be written into Key Vault
# again at each provision, over a value rotated in the vault since. Once a provision has stored it,
# this hook empties the variable in the azd environment (.azure/<env>/.env), so the next provision
# passes '' and the template's conditional secret resources write nothing. A new value is stored
# the same way: azd env set <VARIABLE> <value>, azd provision.
#
# SECRET_VARIABLES lists the environment variables of the @secure() parameters of infra/main.bicep
# that infra/main.parameters.json passes; handlers/infra_drift_test.go keeps the list complete.
set -euo pipefail

SECRET_VARIABLES="DATAVERSE_CLIENT_SECRET WEBHOOK_SECRET NOP_DB_CONNECTION"

for name in $SECRET_VARIABLES; do
  if [ -n "${!name:-}" ]; then
    azd env set "$name" ""
    echo "$name stored in Key Vault; removed from the azd environment, so a later provision keeps the vault's value"
    if [ "$name" = DATAVERSE_CLIENT_SECRET ] && [ -n "${DATAVERSE_CLIENT_SECRET_EXPIRES_ON:-}" ]; then
      # The expiry belongs to the secret just stored: a later secret comes with its own.
      azd env set DATAVERSE_CLIENT_SECRET_EXPIRES_ON ""
    fi
  fi
done
