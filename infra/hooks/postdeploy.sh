#!/usr/bin/env bash
# azd postdeploy hook: creates the host key "nopcommerce" the store sends in x-functions-key.
#
# Host keys are written through the running Functions host, so the key is made here, after the code
# is deployed, and not by the Bicep (a key resource there would be PUT again on every provision, and
# fails while the host is not running). It is idempotent: a key that exists is left as it is (it may
# have been rotated since), so the hook only ever creates the key once. Its value is generated the
# first time and kept in the azd environment as STORE_FUNCTION_KEY (.azure/<env>/.env, on this
# machine, never in git); `az functionapp keys list` reads the app's current value.
#
# Right after a first deployment the host may not run yet (role assignments take minutes to apply,
# and until then the host's storage answers 403), so each step is retried for about 5 minutes.
set -euo pipefail

app="${AZURE_FUNCTION_NAME:?AZURE_FUNCTION_NAME is not set: run azd provision first}"
rg="${AZURE_RESOURCE_GROUP:?AZURE_RESOURCE_GROUP is not set: run azd provision first}"
key_name=nopcommerce
attempts="${STORE_KEY_ATTEMPTS:-20}"
pause="${STORE_KEY_PAUSE_SECONDS:-15}"

echo "Store events URL: ${EVENTS_URL:-} (send the '$key_name' host key in x-functions-key)"

# existing_key prints the app's current value of the key ("" when there is none); fails while the
# host cannot be asked.
existing_key() {
  az functionapp keys list -g "$rg" -n "$app" --query "functionKeys.$key_name" -o tsv
}

for i in $(seq 1 "$attempts"); do
  if current="$(existing_key 2>/dev/null)"; then
    if [ -n "$current" ]; then
      echo "Host key '$key_name' exists; left unchanged. Read it with:"
      echo "  az functionapp keys list -g $rg -n $app --query functionKeys.$key_name -o tsv"
      exit 0
    fi
    key="${STORE_FUNCTION_KEY:-}"
    if [ -z "$key" ]; then
      key="$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
      azd env set STORE_FUNCTION_KEY "$key"
    fi
    if az functionapp keys set -g "$rg" -n "$app" --key-type functionKeys --key-name "$key_name" \
      --key-value "$key" --output none 2>/dev/null; then
      echo "Host key '$key_name' created; its value is STORE_FUNCTION_KEY in .azure/${AZURE_ENV_NAME:-<env>}/.env (azd env get-value STORE_FUNCTION_KEY)."
      exit 0
    fi
  fi
  echo "The function app's host is not answering yet (attempt $i of $attempts); retrying in ${pause}s..."
  sleep "$pause"
done

echo "Could not create the host key '$key_name': the host did not answer. Role assignments can take" >&2
echo "minutes after a first deployment; wait, then run 'azd deploy' again (see infra/README.md)." >&2
exit 1
