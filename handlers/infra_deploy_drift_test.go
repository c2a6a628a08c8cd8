package main

// Drift tests for what makes a deployment go through on Flex Consumption and stay right on the
// next one: no siteConfig property Flex rejects, the scale and memory Flex expects, secrets that a
// later `azd provision` cannot write back over a rotated value, the store's host key made by a hook
// after the code runs, and the opt-in alerts. Same conventions as infra_drift_test.go: the Bicep is
// read as text, and each check also runs on a broken copy to prove it fails.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// driftFlexRejectedSiteConfig are siteConfig properties Flex Consumption refuses (ftpsState with
// ARM error 51021; the others belong to the plans Flex replaces).
// https://learn.microsoft.com/azure/azure-functions/flex-consumption-plan#considerations
var driftFlexRejectedSiteConfig = []string{
	"ftpsState", "alwaysOn", "linuxFxVersion", "use32BitWorkerProcess", "netFrameworkVersion",
	"functionAppScaleLimit", "preWarmedInstanceCount", "functionsRuntimeScaleMonitoringEnabled",
}

// driftCheckFlexSite: the site and its config resources set no property Flex rejects, keep no FTP
// publishing policy, cap instances at 40 or more and default to 2048 MB instances.
func driftCheckFlexSite(files map[string]string) []string {
	var problems []string
	keyAnyDepth := func(body, key string) bool {
		return regexp.MustCompile(`(?m)^\s*'?` + regexp.QuoteMeta(key) + `'?\s*:`).MatchString(body)
	}
	sites := 0
	for _, r := range driftResources(files) {
		if r.existing || !strings.HasPrefix(r.typ, "Microsoft.Web/sites") {
			continue
		}
		if r.typ == "Microsoft.Web/sites" {
			sites++
			// A custom handler on Flex: functionAppConfig.runtime {name: 'custom', version: '1.0'};
			// an uncatalogued version deploys and then fails at host start (research: Flex facts).
			rt := regexp.MustCompile(`(?s)runtime\s*:\s*\{\s*name\s*:\s*'([^']*)'\s*version\s*:\s*'([^']*)'\s*\}`).FindStringSubmatch(r.body)
			if rt == nil || rt[1] != "custom" || rt[2] != "1.0" {
				got := "none"
				if rt != nil {
					got = rt[1] + " " + rt[2]
				}
				problems = append(problems, fmt.Sprintf("%s: site %s: functionAppConfig.runtime must be {name: 'custom', version: '1.0'} for a custom handler on Flex Consumption, got %s", r.file, r.symbol, got))
			}
		}
		for _, k := range driftFlexRejectedSiteConfig {
			if keyAnyDepth(r.body, k) {
				problems = append(problems, fmt.Sprintf("%s: resource %s (%s) sets %s, which Flex Consumption rejects", r.file, r.symbol, r.typ, k))
			}
		}
		if r.typ == "Microsoft.Web/sites/basicPublishingCredentialsPolicies" {
			if v, _ := driftPropertyValue(r.body, "name"); strings.Trim(v, "'") == "ftp" {
				problems = append(problems, fmt.Sprintf("%s: resource %s is an ftp publishing policy; Flex Consumption has no FTP", r.file, r.symbol))
			}
		}
		for _, m := range regexp.MustCompile(`(?m)^\s*maximumInstanceCount\s*:\s*(\d+)`).FindAllStringSubmatch(r.body, -1) {
			if n, _ := strconv.Atoi(m[1]); n < 40 {
				problems = append(problems, fmt.Sprintf("%s: maximumInstanceCount %d is below Flex Consumption's lowest cap (40)", r.file, n))
			}
		}
		for _, m := range regexp.MustCompile(`(?m)^\s*instanceMemoryMB\s*:\s*(\d+)`).FindAllStringSubmatch(r.body, -1) {
			if m[1] != "2048" {
				problems = append(problems, fmt.Sprintf("%s: instanceMemoryMB %s; the default size is 2048", r.file, m[1]))
			}
		}
	}
	if sites == 0 {
		problems = append(problems, "no Microsoft.Web/sites resource in infra/**/*.bicep")
	}
	for _, name := range driftSortedKeys(files) {
		src := driftStripComments(files[name])
		if m := regexp.MustCompile(`(?m)((?:^@\w+\([^\n]*\)\s*\n)*)^param\s+maximumInstanceCount\s+int\s*=\s*(\d+)`).FindStringSubmatch(src); m != nil {
			if n, _ := strconv.Atoi(m[2]); n < 40 {
				problems = append(problems, fmt.Sprintf("%s: maximumInstanceCount defaults to %d; Flex Consumption's lowest cap is 40", name, n))
			}
			if mv := regexp.MustCompile(`@minValue\((\d+)\)`).FindStringSubmatch(m[1]); mv == nil {
				problems = append(problems, fmt.Sprintf("%s: maximumInstanceCount has no @minValue(40)", name))
			} else if n, _ := strconv.Atoi(mv[1]); n < 40 {
				problems = append(problems, fmt.Sprintf("%s: maximumInstanceCount allows %d; Flex Consumption's lowest cap is 40", name, n))
			}
		}
		if m := regexp.MustCompile(`(?m)^param\s+instanceMemoryMB\s+int\s*=\s*(\d+)`).FindStringSubmatch(src); m != nil && m[1] != "2048" {
			problems = append(problems, fmt.Sprintf("%s: instanceMemoryMB defaults to %s; Flex Consumption's default size is 2048", name, m[1]))
		}
	}
	return problems
}

// driftCheckSecretsOneShot: a later `azd provision` never writes an older secret over a rotated
// one. Every @secure() parameter of main.bicep that azd passes (main.parameters.json) is emptied
// by the postprovision hook once stored; every Key Vault secret resource is conditional, so an
// empty value writes nothing; and no host key is PUT by the template.
func driftCheckSecretsOneShot(files map[string]string, parametersJSON, azureYAML, hook string) []string {
	var problems []string
	mainBicep := driftStripComments(files["infra/main.bicep"])
	cleared := map[string]bool{}
	if m := regexp.MustCompile(`(?m)^SECRET_VARIABLES="([^"]*)"`).FindStringSubmatch(hook); m != nil {
		for _, v := range strings.Fields(m[1]) {
			cleared[v] = true
		}
	} else {
		problems = append(problems, `infra/hooks/postprovision.sh: no SECRET_VARIABLES="..." list`)
	}
	if !regexp.MustCompile(`azd env set "\$name" ""`).MatchString(hook) {
		problems = append(problems, "infra/hooks/postprovision.sh does not empty the variables it lists (azd env set \"$name\" \"\")")
	}
	if !regexp.MustCompile(`(?ms)^\s*postprovision:.*?run:\s*bash \./infra/hooks/postprovision\.sh`).MatchString(azureYAML) {
		problems = append(problems, "azure.yaml: no postprovision hook running infra/hooks/postprovision.sh")
	}
	for _, m := range regexp.MustCompile(`(?m)^@secure\(\)\s*\n(?:@[^\n]*\n)*param\s+(\w+)`).FindAllStringSubmatch(mainBicep, -1) {
		// azd fills "${VAR}" and "${VAR=default}" alike.
		pm := regexp.MustCompile(`"` + m[1] + `"\s*:\s*\{\s*"value"\s*:\s*"\$\{(\w+)(?:=[^}]*)?\}"`).FindStringSubmatch(parametersJSON)
		if pm == nil {
			continue // not passed by azd
		}
		if !cleared[pm[1]] {
			problems = append(problems, fmt.Sprintf("secret parameter %s (azd variable %s) is not emptied by infra/hooks/postprovision.sh: every provision would write it into Key Vault again, over a rotated value", m[1], pm[1]))
		}
	}
	for _, name := range driftSortedKeys(files) {
		src := driftStripComments(files[name])
		for _, m := range regexp.MustCompile(`(?m)^\s*resource\s+(\w+)\s+'Microsoft\.KeyVault/vaults/secrets@[^']*'\s*=\s*(?:if\s*\(([^\n]*)\)\s*)?\{`).FindAllStringSubmatchIndex(src, -1) {
			symbol, cond := src[m[2]:m[3]], ""
			if m[4] >= 0 {
				cond = src[m[4]:m[5]]
			}
			body, _, _ := driftEnclosed(src[m[1]-1:], 0)
			value := ""
			if vm := regexp.MustCompile(`(?m)^\s*value\s*:\s*(\w+)\s*$`).FindStringSubmatch(body); vm != nil {
				value = vm[1]
			}
			// The condition must be the value's own emptiness: "if (true)", or one on
			// another parameter, writes the secret again over a rotated one.
			if value == "" || !regexp.MustCompile(`^\s*!\s*empty\(\s*`+regexp.QuoteMeta(value)+`\s*\)\s*$`).MatchString(cond) {
				problems = append(problems, fmt.Sprintf("%s: Key Vault secret %s is written whatever its value (condition %q, value %q); make it conditional on its value: if (!empty(<value>))", name, symbol, cond, value))
			}
		}
		if regexp.MustCompile(`'Microsoft\.Web/sites/host/functionKeys@`).MatchString(src) {
			problems = append(problems, fmt.Sprintf("%s: a host key resource is PUT on every provision (and fails while the host is not running); the postdeploy hook creates the key", name))
		}
	}
	return problems
}

// driftCheckStoreKeyHook: the store's host key is created after the code is deployed, by an azd
// postdeploy hook that retries and never overwrites an existing key.
func driftCheckStoreKeyHook(azureYAML, hook string) []string {
	var problems []string
	hook = regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(hook, "") // comments say what it does, not do it
	if !regexp.MustCompile(`(?ms)^\s*postdeploy:.*?run:\s*bash \./infra/hooks/postdeploy\.sh`).MatchString(azureYAML) {
		problems = append(problems, "azure.yaml: no postdeploy hook running infra/hooks/postdeploy.sh")
	}
	set := strings.Index(hook, "az functionapp keys set")
	list := strings.Index(hook, "az functionapp keys list")
	switch {
	case set < 0:
		problems = append(problems, "infra/hooks/postdeploy.sh does not create the key (az functionapp keys set)")
	case list < 0 || list > set:
		problems = append(problems, "infra/hooks/postdeploy.sh sets the key without first checking it exists: a rotated key would be overwritten")
	}
	if !regexp.MustCompile(`(?s)for\s+\w+\s+in\b.*\bsleep\b.*\bdone\b`).MatchString(hook) {
		problems = append(problems, "infra/hooks/postdeploy.sh does not retry (a loop with sleep): right after a first deployment the host is not running yet")
	}
	if !strings.Contains(hook, "--key-name nopcommerce") && !regexp.MustCompile(`key_name=nopcommerce\b`).MatchString(hook) {
		problems = append(problems, "infra/hooks/postdeploy.sh does not create the key named nopcommerce (the name the guide and EVENTS_URL's description give)")
	}
	return problems
}

// driftCheckAlerts: alert rules behind one email parameter, off by default: an action group that
// emails it, dead letters above zero on each queue, handler errors (traces severityLevel >= 3)
// above a threshold.
func driftCheckAlerts(files map[string]string, parametersJSON string) []string {
	var problems []string
	mainBicep := driftStripComments(files["infra/main.bicep"])
	if !regexp.MustCompile(`(?m)^param\s+alertEmail\s+string\s*=\s*''`).MatchString(mainBicep) {
		problems = append(problems, "infra/main.bicep: no `param alertEmail string = ''` (alerts off by default)")
	}
	if !regexp.MustCompile(`(?m)^module\s+\w+\s+'modules/alerts\.bicep'\s*=\s*if\s*\(\s*!empty\(alertEmail\)\s*\)`).MatchString(mainBicep) {
		problems = append(problems, "infra/main.bicep: the alerts module is not deployed only when alertEmail is set")
	}
	if !regexp.MustCompile(`"alertEmail"\s*:\s*\{\s*"value"\s*:\s*"\$\{ALERT_EMAIL\}"`).MatchString(parametersJSON) {
		problems = append(problems, "infra/main.parameters.json does not pass alertEmail from ALERT_EMAIL")
	}
	var group, deadLetters, errors bool
	for _, r := range driftResources(files) {
		body := r.body
		switch r.typ {
		case "Microsoft.Insights/actionGroups":
			group = regexp.MustCompile(`(?s)emailReceivers\s*:.*emailAddress\s*:\s*alertEmail\b`).MatchString(body)
		case "Microsoft.Insights/metricAlerts":
			if strings.Contains(body, "metricName: 'DeadletteredMessages'") {
				deadLetters = true
				for _, want := range []string{"operator: 'GreaterThan'", "threshold: 0\n", "name: 'EntityName'", "actionGroupId:"} {
					if !strings.Contains(body, want) {
						problems = append(problems, fmt.Sprintf("%s: dead-letter alert %s lacks %q", r.file, r.symbol, strings.TrimSpace(want)))
					}
				}
			}
		case "Microsoft.Insights/scheduledQueryRules":
			if regexp.MustCompile(`query:\s*'traces\s*\|\s*where severityLevel >= 3'`).MatchString(body) {
				errors = true
				// host.json samples traces: the alert totals itemCount, not the rows kept.
				for _, want := range []string{"operator: 'GreaterThan'", "threshold: errorAlertThreshold", "actionGroups:",
					"metricMeasureColumn: 'itemCount'", "timeAggregation: 'Total'"} {
					if !strings.Contains(body, want) {
						problems = append(problems, fmt.Sprintf("%s: error alert %s lacks %q", r.file, r.symbol, want))
					}
				}
			}
		}
	}
	if !group {
		problems = append(problems, "no Microsoft.Insights/actionGroups resource emailing alertEmail")
	}
	if !deadLetters {
		problems = append(problems, "no metric alert on Service Bus DeadletteredMessages")
	}
	if !errors {
		problems = append(problems, "no log alert on handler errors (traces | where severityLevel >= 3)")
	}
	return problems
}

func TestDriftFlexSite(t *testing.T) {
	r := driftLoadRepo(t)
	driftReport(t, driftCheckFlexSite(r.bicep))
}

func TestDriftSecretsOneShot(t *testing.T) {
	r := driftLoadRepo(t)
	driftReport(t, driftCheckSecretsOneShot(r.bicep, r.read(t, "infra/main.parameters.json"), r.read(t, "azure.yaml"), r.read(t, "infra/hooks/postprovision.sh")))
}

// TestPostprovisionHookRuns runs infra/hooks/postprovision.sh with a stand-in azd that records
// its calls: the secrets given are emptied in the azd environment (the client secret's expiry
// with it), those not given are left alone.
func TestPostprovisionHookRuns(t *testing.T) {
	dir := t.TempDir()
	calls := filepath.Join(dir, "calls")
	fake := "#!/usr/bin/env bash\nprintf '%s|' \"$@\" >> " + calls + "\necho >> " + calls + "\n"
	if err := os.WriteFile(filepath.Join(dir, "azd"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", filepath.Join("..", "infra", "hooks", "postprovision.sh"))
	cmd.Env = append(os.Environ(), "PATH="+dir+string(os.PathListSeparator)+os.Getenv("PATH"),
		"DATAVERSE_CLIENT_SECRET=not-a-real-secret", "DATAVERSE_CLIENT_SECRET_EXPIRES_ON=2027-05-01T00:00:00Z",
		"WEBHOOK_SECRET=", "NOP_DB_CONNECTION=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("hook: %v\n%s", err, out)
	} else if strings.Contains(string(out), "not-a-real-secret") {
		t.Errorf("the hook printed the secret: %s", out)
	}
	b, _ := os.ReadFile(calls)
	got := strings.Fields(strings.ReplaceAll(string(b), "\n", " "))
	want := []string{"env|set|DATAVERSE_CLIENT_SECRET||", "env|set|DATAVERSE_CLIENT_SECRET_EXPIRES_ON||"}
	if !slices.Equal(got, want) {
		t.Errorf("azd calls %q, want %q", got, want)
	}
}

func TestDriftStoreKeyHook(t *testing.T) {
	r := driftLoadRepo(t)
	driftReport(t, driftCheckStoreKeyHook(r.read(t, "azure.yaml"), r.read(t, "infra/hooks/postdeploy.sh")))
}

func TestDriftAlerts(t *testing.T) {
	r := driftLoadRepo(t)
	driftReport(t, driftCheckAlerts(r.bicep, r.read(t, "infra/main.parameters.json")))
}

// TestDriftDeployChecksCatchBreakage: each check above fails on a broken copy of the real files.
func TestDriftDeployChecksCatchBreakage(t *testing.T) {
	r := driftLoadRepo(t)
	params, yaml := r.read(t, "infra/main.parameters.json"), r.read(t, "azure.yaml")
	provision, deploy := r.read(t, "infra/hooks/postprovision.sh"), r.read(t, "infra/hooks/postdeploy.sh")

	t.Run("flex site", func(t *testing.T) {
		if p := driftCheckFlexSite(r.bicep); len(p) != 0 {
			t.Skipf("the real files already drift (TestDriftFlexSite reports it): %v", p)
		}
		for _, k := range driftFlexRejectedSiteConfig {
			broken := driftMustReplace(t, r.bicep, "      minTlsVersion: '1.2'\n", "      minTlsVersion: '1.2'\n      "+k+": 'x'\n")
			driftExpectProblem(t, "siteConfig."+k, driftCheckFlexSite(broken), k, "rejects")
		}
		goRuntime := driftMustReplace(t, r.bicep, "        name: 'custom'\n        version: '1.0'\n", "        name: 'go'\n        version: '1.5'\n")
		driftExpectProblem(t, "runtime other than custom 1.0", driftCheckFlexSite(goRuntime), "functionAppConfig.runtime", "go 1.5")
		ftp := driftMustReplace(t, r.bicep, "  name: 'scm'\n", "  name: 'ftp'\n")
		driftExpectProblem(t, "ftp publishing policy", driftCheckFlexSite(ftp), "ftp publishing policy")
		low := driftMustReplace(t, r.bicep, "        maximumInstanceCount: maximumInstanceCount\n", "        maximumInstanceCount: 10\n")
		driftExpectProblem(t, "instance cap literal under 40", driftCheckFlexSite(low), "maximumInstanceCount 10")
		lowDefault := map[string]string{}
		for k, v := range r.bicep {
			lowDefault[k] = strings.Replace(v, "@minValue(40)\n@maxValue(1000)\nparam maximumInstanceCount int = 40", "@minValue(1)\n@maxValue(1000)\nparam maximumInstanceCount int = 20", 1)
		}
		got := driftCheckFlexSite(lowDefault)
		driftExpectProblem(t, "instance cap default under 40", got, "defaults to 20")
		driftExpectProblem(t, "instance cap minimum under 40", got, "allows 1")
		mem := map[string]string{}
		for k, v := range r.bicep {
			mem[k] = strings.Replace(v, "param instanceMemoryMB int = 2048", "param instanceMemoryMB int = 512", 1)
		}
		driftExpectProblem(t, "512 MB default", driftCheckFlexSite(mem), "instanceMemoryMB defaults to 512")
	})

	t.Run("secrets one-shot", func(t *testing.T) {
		if p := driftCheckSecretsOneShot(r.bicep, params, yaml, provision); len(p) != 0 {
			t.Skipf("the real files already drift (TestDriftSecretsOneShot reports it): %v", p)
		}
		forgotten := strings.Replace(provision, " WEBHOOK_SECRET ", " ", 1)
		driftExpectProblem(t, "a secret the hook keeps", driftCheckSecretsOneShot(r.bicep, params, yaml, forgotten), "webhookSecret", "WEBHOOK_SECRET")
		noHook := strings.Replace(yaml, "postprovision:", "preprovision:", 1)
		driftExpectProblem(t, "hook not wired", driftCheckSecretsOneShot(r.bicep, params, noHook, provision), "postprovision")
		always := driftMustReplace(t, r.bicep, "'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(webhookSecret))", "'Microsoft.KeyVault/vaults/secrets@2023-07-01' =")
		driftExpectProblem(t, "unconditional secret", driftCheckSecretsOneShot(always, params, yaml, provision), "webhookSecretResource is written whatever its value")
		alwaysTrue := driftMustReplace(t, r.bicep, "= if (!empty(webhookSecret))", "= if (true)")
		driftExpectProblem(t, "a condition always true", driftCheckSecretsOneShot(alwaysTrue, params, yaml, provision), "webhookSecretResource is written whatever its value", `"true"`)
		otherParam := driftMustReplace(t, r.bicep, "= if (!empty(webhookSecret))", "= if (!empty(webhookSecretName))")
		driftExpectProblem(t, "a condition on another parameter", driftCheckSecretsOneShot(otherParam, params, yaml, provision), "webhookSecretResource is written whatever its value")
		withDefault := strings.Replace(params, `"${WEBHOOK_SECRET}"`, `"${WEBHOOK_SECRET=}"`, 1)
		if withDefault == params {
			t.Fatal("main.parameters.json passes no ${WEBHOOK_SECRET}")
		}
		driftExpectProblem(t, "an azd default hides the variable", driftCheckSecretsOneShot(r.bicep, withDefault, yaml, strings.Replace(provision, " WEBHOOK_SECRET ", " ", 1)), "webhookSecret", "WEBHOOK_SECRET")
		withKey := map[string]string{}
		for k, v := range r.bicep {
			withKey[k] = v
		}
		withKey["infra/modules/functionapp.bicep"] += "\nresource storeKey 'Microsoft.Web/sites/host/functionKeys@2022-09-01' = {\n  name: 'x/default/nopcommerce'\n}\n"
		driftExpectProblem(t, "host key in the template", driftCheckSecretsOneShot(withKey, params, yaml, provision), "host key resource")
	})

	t.Run("store key hook", func(t *testing.T) {
		if p := driftCheckStoreKeyHook(yaml, deploy); len(p) != 0 {
			t.Skipf("the real files already drift (TestDriftStoreKeyHook reports it): %v", p)
		}
		driftExpectProblem(t, "hook not wired", driftCheckStoreKeyHook(strings.Replace(yaml, "postdeploy:", "predeploy:", 1), deploy), "postdeploy")
		blind := strings.ReplaceAll(deploy, "az functionapp keys list", "true")
		driftExpectProblem(t, "set without looking", driftCheckStoreKeyHook(yaml, blind), "without first checking")
		once := strings.ReplaceAll(deploy, "sleep", "true")
		driftExpectProblem(t, "no retry", driftCheckStoreKeyHook(yaml, once), "does not retry")
	})

	t.Run("alerts", func(t *testing.T) {
		if p := driftCheckAlerts(r.bicep, params); len(p) != 0 {
			t.Skipf("the real files already drift (TestDriftAlerts reports it): %v", p)
		}
		on := driftMustReplace(t, r.bicep, "module alerts 'modules/alerts.bicep' = if (!empty(alertEmail)) {", "module alerts 'modules/alerts.bicep' = {")
		driftExpectProblem(t, "alerts always on", driftCheckAlerts(on, params), "only when alertEmail")
		noDL := driftMustReplace(t, r.bicep, "metricName: 'DeadletteredMessages'", "metricName: 'ActiveMessages'")
		driftExpectProblem(t, "no dead-letter alert", driftCheckAlerts(noDL, params), "DeadletteredMessages")
		perNamespace := driftMustReplace(t, r.bicep, "              name: 'EntityName'\n", "              name: 'Namespace'\n")
		driftExpectProblem(t, "dead letters not per queue", driftCheckAlerts(perNamespace, params), "EntityName")
		warnings := driftMustReplace(t, r.bicep, "where severityLevel >= 3'", "where severityLevel >= 2'")
		driftExpectProblem(t, "error alert counting warnings", driftCheckAlerts(warnings, params), "severityLevel >= 3")
		driftExpectProblem(t, "email not passed", driftCheckAlerts(r.bicep, strings.Replace(params, "${ALERT_EMAIL}", "${OTHER}", 1)), "ALERT_EMAIL")
		rows := driftMustReplace(t, r.bicep, "          metricMeasureColumn: 'itemCount'\n          timeAggregation: 'Total'", "          timeAggregation: 'Count'")
		driftExpectProblem(t, "error alert counting sampled rows", driftCheckAlerts(rows, params), "itemCount")
	})
}
