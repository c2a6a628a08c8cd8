package main

// Drift tests: the code, the function folders, the packaging and the infrastructure (infra/*.bicep,
// azure.yaml) describe the same app in different files. These tests read them all and fail when
// they disagree: a setting the code needs that Bicep does not set, a queue a trigger binds that
// Bicep does not create with sessions, a role the code needs that is not granted (or a broader one
// that is), a function folder without a handler route.
//
// There is no Bicep compiler here, so the Bicep is read as text with a few conventions the infra
// follows (documented where they are used). Each check is a function over text so that
// TestDriftChecksCatchBreakage can run it on deliberately broken copies and prove it fails.

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/config"
)

// ---------------------------------------------------------------------------------------------
// What the code does, as the infrastructure must grant it (infra/modules/roles.bicep has the same
// table with the reasons).
// ---------------------------------------------------------------------------------------------

// driftRequiredRoles maps each built-in role the app's identity needs to why it needs it.
var driftRequiredRoles = map[string]string{
	// Send (events), receive (triggers, sessions), peek/receive the DLQ (deadletters), and Manage
	// for the administration client's GetQueueRuntimeProperties (status queue counts) and for the
	// Flex scale controller. Only Data Owner carries Manage; it includes send and listen.
	"090c5cfd-751d-490a-894a-3ce6f1109419": "Azure Service Bus Data Owner",
	"b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",        // host storage, deployment container
	"0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor", // sync state table
	"4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",         // client + webhook secrets
	"3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",   // App Insights with local auth off
}

// driftRoleScopes is the resource type each required role must be scoped to: the narrowest that
// works (infra/modules/roles.bicep's table). Data Owner on the whole namespace would give the app
// Manage on every queue and topic there; Key Vault Secrets User on another resource reads nothing.
var driftRoleScopes = map[string]string{
	"090c5cfd-751d-490a-894a-3ce6f1109419": "Microsoft.ServiceBus/namespaces/queues",
	"b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Microsoft.Storage/storageAccounts",
	"0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Microsoft.Storage/storageAccounts",
	"4633458b-17de-408a-b874-0445c86b69e6": "Microsoft.KeyVault/vaults",
	"3913510d-42f4-4e42-8a64-420c390055eb": "Microsoft.Insights/components",
}

// driftKnownRoleNames names roles a reviewer would recognise in a failure message; the broad ones
// must never be assigned to the app.
var driftKnownRoleNames = map[string]string{
	"8e3af657-a8ff-443c-a75c-2fe8c4bcb635": "Owner",
	"b24988ac-6180-42a0-ab88-20f7382dd24c": "Contributor",
	"18d7d88d-d35e-4fb7-a5c3-7773c4a72abb": "User Access Administrator",
	"f58310d9-a9f6-439a-9e8d-f62e7b41a168": "Role Based Access Control Administrator",
	"acdd72a7-3385-48ef-bd42-f606fba81ae7": "Reader",
	"17d1049b-9a84-46fb-8f53-869881c3d3ab": "Storage Account Contributor",
	"ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor",
	"974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
	"00482a5a-887f-4fb3-b363-3b7bf9d12440": "Key Vault Administrator",
	"b86a8fe4-8bc7-4076-a7a4-3f2fd5f6a9b5": "Key Vault Secrets Officer",
	"69a216fc-b8fb-44d8-bc22-1f3c2cd27a39": "Azure Service Bus Data Sender",
	"4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0": "Azure Service Bus Data Receiver",
}

func driftRoleName(id string) string {
	if n, ok := driftRequiredRoles[id]; ok {
		return n
	}
	if n, ok := driftKnownRoleNames[id]; ok {
		return n
	}
	return "unknown role"
}

// driftPlatformSettingPrefixes are app settings read by the Functions host or the platform, not by the
// Go code: Bicep may set them although config.Known does not list them.
var driftPlatformSettingPrefixes = []string{"AzureWebJobsStorage__", "APPLICATIONINSIGHTS_"}

// driftSettingsFlexRejects are app settings Flex Consumption does not accept (they come from
// functionAppConfig.runtime).
var driftSettingsFlexRejects = []string{"FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION", "WEBSITE_RUN_FROM_PACKAGE", "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING", "WEBSITE_CONTENTSHARE"}

// driftPlatformSetSettings are set by the Functions host for the handler process; Bicep must not.
var driftPlatformSetSettings = []string{"FUNCTIONS_CUSTOMHANDLER_PORT"}

// ---------------------------------------------------------------------------------------------
// Loading the repository's files
// ---------------------------------------------------------------------------------------------

type driftBinding struct {
	Type              string `json:"type"`
	Direction         string `json:"direction"`
	Name              string `json:"name"`
	QueueName         string `json:"queueName"`
	Connection        string `json:"connection"`
	IsSessionsEnabled *bool  `json:"isSessionsEnabled"`
	AuthLevel         string `json:"authLevel"`
	Route             string `json:"route"`
}

type driftFunctionJSON struct {
	Bindings []driftBinding `json:"bindings"`
}

type driftRepo struct {
	root      string
	bicep     map[string]string // path relative to root -> text
	functions map[string]driftFunctionJSON
}

func driftLoadRepo(t *testing.T) *driftRepo {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	r := &driftRepo{root: root, bicep: map[string]string{}, functions: map[string]driftFunctionJSON{}}
	err = filepath.WalkDir(filepath.Join(root, "infra"), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.HasSuffix(p, ".bicep") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		r.bicep[filepath.ToSlash(rel)] = string(b)
		return nil
	})
	if err != nil {
		t.Fatalf("reading infra/**/*.bicep: %v", err)
	}
	if len(r.bicep) == 0 {
		t.Fatal("no Bicep files under infra/")
	}
	dirs, err := os.ReadDir(filepath.Join(root, "functions"))
	if err != nil {
		t.Fatalf("reading functions/: %v", err)
	}
	for _, d := range dirs {
		if !d.IsDir() {
			continue
		}
		p := filepath.Join(root, "functions", d.Name(), "function.json")
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("function folder %s: %v", d.Name(), err)
		}
		var f driftFunctionJSON
		if err := json.Unmarshal(b, &f); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		r.functions[d.Name()] = f
	}
	if len(r.functions) == 0 {
		t.Fatal("no function folders under functions/")
	}
	return r
}

func (r *driftRepo) read(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(r.root, rel))
	if err != nil {
		t.Fatalf("reading %s: %v", rel, err)
	}
	return string(b)
}

// ---------------------------------------------------------------------------------------------
// Reading Bicep as text
// ---------------------------------------------------------------------------------------------

// driftStripComments blanks // and /* */ comments outside single-quoted strings, keeping line breaks.
func driftStripComments(src string) string {
	var b strings.Builder
	inStr := false
	for i := 0; i < len(src); i++ {
		c := src[i]
		switch {
		case inStr:
			b.WriteByte(c)
			if c == '\\' && i+1 < len(src) {
				i++
				b.WriteByte(src[i])
			} else if c == '\'' {
				inStr = false
			}
		case c == '\'':
			inStr = true
			b.WriteByte(c)
		case c == '/' && i+1 < len(src) && src[i+1] == '/':
			for i < len(src) && src[i] != '\n' {
				i++
			}
			if i < len(src) {
				b.WriteByte('\n')
			}
		case c == '/' && i+1 < len(src) && src[i+1] == '*':
			i += 2
			for i+1 < len(src) && !(src[i] == '*' && src[i+1] == '/') {
				if src[i] == '\n' {
					b.WriteByte('\n')
				}
				i++
			}
			i++
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// driftEnclosed returns what lies between the first '{' or '[' at or after from and its matching
// closer, skipping strings; ok is false when there is none or it is unbalanced.
func driftEnclosed(src string, from int) (body string, end int, ok bool) {
	start := strings.IndexAny(src[from:], "{[")
	if start < 0 {
		return "", 0, false
	}
	start += from
	depth, inStr := 0, false
	for i := start; i < len(src); i++ {
		c := src[i]
		if inStr {
			if c == '\\' {
				i++
			} else if c == '\'' {
				inStr = false
			}
			continue
		}
		switch c {
		case '\'':
			inStr = true
		case '{', '[', '(':
			depth++
		case '}', ']', ')':
			depth--
			if depth == 0 {
				return src[start+1 : i], i, true
			}
		}
	}
	return "", 0, false
}

var driftKeyLine = regexp.MustCompile(`^\s*('([^']+)'|[A-Za-z_][A-Za-z0-9_]*)\s*:`)

// driftTopLevelKeys lists the keys of an object body (the text inside its braces), ignoring nested
// objects and arrays.
func driftTopLevelKeys(body string) []string {
	var keys []string
	depth := 0
	for _, line := range strings.Split(body, "\n") {
		if depth == 0 {
			if m := driftKeyLine.FindStringSubmatch(line); m != nil {
				k := m[1]
				if m[2] != "" {
					k = m[2]
				}
				keys = append(keys, k)
			}
		}
		depth += driftBracketBalance(line)
	}
	return keys
}

func driftBracketBalance(line string) int {
	n, inStr := 0, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		if inStr {
			if c == '\\' {
				i++
			} else if c == '\'' {
				inStr = false
			}
			continue
		}
		switch c {
		case '\'':
			inStr = true
		case '{', '[', '(':
			n++
		case '}', ']', ')':
			n--
		}
	}
	return n
}

var driftStringLiteral = regexp.MustCompile(`'([^'\\]*)'`)

// driftPropertyValue returns the text after "key:" on the first line that sets key (any depth).
func driftPropertyValue(body, key string) (string, bool) {
	re := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(key) + `\s*:\s*(.*?)\s*$`)
	m := re.FindStringSubmatch(body)
	if m == nil {
		return "", false
	}
	return m[1], true
}

type driftBicepResource struct {
	file, symbol, typ string
	existing          bool
	loopVar, loopOver string // for [for x in y: {...}]
	body              string // the resource's object body
}

var driftResourceDecl = regexp.MustCompile(`(?m)^\s*resource\s+(\w+)\s+'([^'@]+)@[^']*'\s*(existing\s*)?=\s*(if\s*\(.*?\)\s*)?`)
var driftLoopHeader = regexp.MustCompile(`^\s*for\s+(?:\(\s*(\w+)\s*,\s*\w+\s*\)|(\w+))\s+in\s+(\w+)\s*:`)

func driftResources(files map[string]string) []driftBicepResource {
	var out []driftBicepResource
	for _, name := range driftSortedKeys(files) {
		src := driftStripComments(files[name])
		for _, m := range driftResourceDecl.FindAllStringSubmatchIndex(src, -1) {
			r := driftBicepResource{file: name, symbol: src[m[2]:m[3]], typ: src[m[4]:m[5]], existing: m[6] >= 0}
			rest := src[m[1]:]
			trimmed := strings.TrimLeft(rest, " \t\r\n")
			if strings.HasPrefix(trimmed, "[") {
				inner, _, ok := driftEnclosed(rest, 0)
				if !ok {
					continue
				}
				if lm := driftLoopHeader.FindStringSubmatch(inner); lm != nil {
					r.loopVar = lm[1] + lm[2]
					r.loopOver = lm[3]
				}
				obj, _, ok := driftEnclosed(inner, 0)
				if !ok {
					continue
				}
				r.body = obj
			} else {
				obj, _, ok := driftEnclosed(rest, 0)
				if !ok {
					continue
				}
				r.body = obj
			}
			out = append(out, r)
		}
	}
	return out
}

// driftArrayDefault resolves a param or var of file declared with a literal array of strings.
func driftArrayDefault(src, ident string) ([]string, bool) {
	src = driftStripComments(src)
	re := regexp.MustCompile(`(?m)^\s*(?:param|var)\s+` + regexp.QuoteMeta(ident) + `\b[^=\n]*=\s*\[`)
	loc := re.FindStringIndex(src)
	if loc == nil {
		return nil, false
	}
	body, _, ok := driftEnclosed(src, loc[1]-1)
	if !ok {
		return nil, false
	}
	var out []string
	for _, m := range driftStringLiteral.FindAllStringSubmatch(body, -1) {
		out = append(out, m[1])
	}
	return out, true
}

// driftObjectVar returns the body of "var ident = { ... }" in src.
func driftObjectVar(src, ident string) (string, bool) {
	src = driftStripComments(src)
	re := regexp.MustCompile(`(?m)^\s*var\s+` + regexp.QuoteMeta(ident) + `\s*=\s*\{`)
	loc := re.FindStringIndex(src)
	if loc == nil {
		return "", false
	}
	body, _, ok := driftEnclosed(src, loc[1]-1)
	return body, ok
}

func driftSortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// ---------------------------------------------------------------------------------------------
// Check: settings
// ---------------------------------------------------------------------------------------------

// driftBicepAppSettings reads the function app's settings. Convention: the site's settings are the
// keys of the single object literal `var appSettings = { ... }` in infra/**/*.bicep.
func driftBicepAppSettings(files map[string]string) ([]string, []string) {
	var found []string
	var keys []string
	for _, name := range driftSortedKeys(files) {
		if body, ok := driftObjectVar(files[name], "appSettings"); ok {
			found = append(found, name)
			keys = append(keys, driftTopLevelKeys(body)...)
		}
	}
	// Settings set elsewhere escape this reader, and an appsettings config resource replaces
	// every setting of the site with its own.
	for _, r := range driftResources(files) {
		if r.existing || r.typ != "Microsoft.Web/sites/config" {
			continue
		}
		if v, _ := driftPropertyValue(r.body, "name"); strings.Trim(v, "'") == "appsettings" {
			return nil, []string{fmt.Sprintf("%s: resource %s sets the app settings as a sites/config resource: keep them in `var appSettings`, the site's only settings", r.file, r.symbol)}
		}
	}
	switch len(found) {
	case 0:
		return nil, []string{"no `var appSettings = { ... }` in infra/**/*.bicep: the drift test cannot see the function app's settings"}
	case 1:
		return keys, nil
	default:
		return nil, []string{fmt.Sprintf("`var appSettings` is declared in several files (%s): keep one", strings.Join(found, ", "))}
	}
}

// driftCheckSettings compares the settings the code reads (config.Known) with the settings Bicep sets.
// connections are the function.json "connection" names (identity-based: <name>__fullyQualifiedNamespace).
func driftCheckSettings(known []config.Setting, bicepSettings []string, connections []string) []string {
	var problems []string
	set := map[string]bool{}
	for _, s := range bicepSettings {
		if set[s] {
			problems = append(problems, fmt.Sprintf("app setting %s is set twice in Bicep", s))
		}
		set[s] = true
	}
	knownByName := map[string]config.Setting{}
	for _, s := range known {
		knownByName[s.Name] = s
		switch {
		case slices.Contains(driftPlatformSetSettings, s.Name):
			if set[s.Name] {
				problems = append(problems, fmt.Sprintf("app setting %s is set by the Functions host; Bicep must not set it", s.Name))
			}
		case s.LocalOnly:
			if set[s.Name] {
				problems = append(problems, fmt.Sprintf("app setting %s is local-only (config.Known) but Bicep sets it in Azure", s.Name))
			}
		case s.Secret:
			// Secrets reach the app from Key Vault (KEY_VAULT_URL + *_NAME), never as plain app settings.
			if set[s.Name] {
				problems = append(problems, fmt.Sprintf("app setting %s is a secret (config.Known): keep it in Key Vault, not in Bicep app settings", s.Name))
			}
		case s.Required:
			if !set[s.Name] {
				problems = append(problems, fmt.Sprintf("setting %s is required by the code (config.Known) but Bicep does not set it", s.Name))
			}
		default:
			// docs/operations.md: every setting as an app setting, so an admin tunes it in
			// the portal (possibly empty, or its default) instead of having to know its name.
			if !set[s.Name] {
				problems = append(problems, fmt.Sprintf("setting %s (config.Known) is not an app setting in Bicep: docs/operations.md puts every setting in the app settings, where admins tune them", s.Name))
			}
		}
	}
	for _, name := range bicepSettings {
		if _, ok := knownByName[name]; ok {
			continue
		}
		if slices.Contains(driftSettingsFlexRejects, name) {
			problems = append(problems, fmt.Sprintf("app setting %s is not accepted on Flex Consumption (runtime comes from functionAppConfig)", name))
			continue
		}
		platform := false
		for _, p := range driftPlatformSettingPrefixes {
			platform = platform || strings.HasPrefix(name, p)
		}
		for _, c := range connections {
			platform = platform || strings.HasPrefix(name, c+"__")
		}
		if !platform {
			problems = append(problems, fmt.Sprintf("Bicep sets app setting %s, which the code does not read (config.Known) and the host does not use: a typo or a leftover", name))
		}
	}
	for _, c := range connections {
		for _, suffix := range []string{"__fullyQualifiedNamespace", "__credential", "__clientId"} {
			if !set[c+suffix] {
				problems = append(problems, fmt.Sprintf("function.json binds connection %q but Bicep does not set %s (identity-based connection)", c, c+suffix))
			}
		}
	}
	for _, p := range []string{"AzureWebJobsStorage__accountName", "AzureWebJobsStorage__credential", "AzureWebJobsStorage__clientId", "APPLICATIONINSIGHTS_CONNECTION_STRING", "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"} {
		if !set[p] {
			problems = append(problems, fmt.Sprintf("Bicep does not set %s (identity-based host storage / telemetry with local auth off)", p))
		}
	}
	sort.Strings(problems)
	return problems
}

func driftConnectionNames(funcs map[string]driftFunctionJSON) []string {
	seen := map[string]bool{}
	for _, f := range funcs {
		for _, b := range f.Bindings {
			if b.Connection != "" {
				seen[b.Connection] = true
			}
		}
	}
	return driftSortedKeys(seen)
}

// driftCheckLocalSettingsExample checks that local.settings.json.example lists every setting a local
// run can use (config.Known minus Azure-only ones).
func driftCheckLocalSettingsExample(known []config.Setting, example []byte) []string {
	var f struct {
		Values map[string]any `json:"Values"`
	}
	if err := json.Unmarshal(example, &f); err != nil {
		return []string{fmt.Sprintf("local.settings.json.example is not valid JSON: %v", err)}
	}
	var problems []string
	for _, s := range known {
		if s.AzureOnly {
			continue
		}
		if _, ok := f.Values[s.Name]; !ok {
			problems = append(problems, fmt.Sprintf("local.settings.json.example does not list %s (config.Known)", s.Name))
		}
	}
	return problems
}

// ---------------------------------------------------------------------------------------------
// Check: queues and Service Bus triggers
// ---------------------------------------------------------------------------------------------

type driftBicepQueue struct {
	name, file string
	props      string
}

const driftQueueType = "Microsoft.ServiceBus/namespaces/queues"

// driftBicepQueues finds the queues Bicep creates: a queue resource either names itself with a string
// literal, or loops over a param/var of the same file declared with a literal array.
func driftBicepQueues(files map[string]string) ([]driftBicepQueue, []string) {
	var out []driftBicepQueue
	var problems []string
	for _, r := range driftResources(files) {
		if r.typ != driftQueueType || r.existing {
			continue
		}
		var names []string
		if r.loopOver != "" {
			arr, ok := driftArrayDefault(files[r.file], r.loopOver)
			if !ok {
				problems = append(problems, fmt.Sprintf("%s: queue resource %s loops over %s, which is not a literal array the drift test can read", r.file, r.symbol, r.loopOver))
				continue
			}
			names = arr
		} else {
			v, _ := driftPropertyValue(r.body, "name")
			m := driftStringLiteral.FindStringSubmatch(v)
			if m == nil || strings.Contains(v, "${") {
				problems = append(problems, fmt.Sprintf("%s: queue resource %s has no literal name", r.file, r.symbol))
				continue
			}
			names = []string{m[1]}
		}
		for _, n := range names {
			out = append(out, driftBicepQueue{name: n, file: r.file, props: r.body})
		}
	}
	if len(out) == 0 && len(problems) == 0 {
		problems = append(problems, "no Service Bus queue resource ("+driftQueueType+") in infra/**/*.bicep")
	}
	return out, problems
}

// driftIntParamFloor is the lowest value the int parameter name of src can take (its @minValue, or
// its default when it has none), -1 when src declares no such parameter.
func driftIntParamFloor(src, name string) int {
	m := regexp.MustCompile(`(?m)((?:^@\w+\([^\n]*\)\s*\n)*)^param\s+` + regexp.QuoteMeta(name) + `\s+int(?:\s*=\s*(\d+))?`).FindStringSubmatch(driftStripComments(src))
	if m == nil {
		return -1
	}
	if mv := regexp.MustCompile(`@minValue\((\d+)\)`).FindStringSubmatch(m[1]); mv != nil {
		n, _ := strconv.Atoi(mv[1])
		return n
	}
	n, err := strconv.Atoi(m[2])
	if err != nil {
		return -1
	}
	return n
}

// driftCheckServices: the Service Bus namespace is Standard or Premium (sessions and duplicate
// detection; Basic has neither) with local auth off, and the Key Vault authorizes with Azure RBAC
// (the app's access is a role assignment, not an access policy).
func driftCheckServices(files map[string]string) []string {
	var problems []string
	namespaces, vaults := 0, 0
	for _, r := range driftResources(files) {
		if r.existing {
			continue
		}
		switch r.typ {
		case "Microsoft.ServiceBus/namespaces":
			namespaces++
			sku := ""
			if m := regexp.MustCompile(`(?s)sku\s*:\s*\{[^}]*?name\s*:\s*('[^']*'|\w+)`).FindStringSubmatch(r.body); m != nil {
				sku = m[1]
			}
			if sku != "'Standard'" && sku != "'Premium'" {
				problems = append(problems, fmt.Sprintf("%s: Service Bus namespace %s has sku %q: sessions and duplicate detection need Standard or Premium", r.file, r.symbol, sku))
			}
			if v, _ := driftPropertyValue(r.body, "disableLocalAuth"); v != "true" {
				problems = append(problems, fmt.Sprintf("%s: Service Bus namespace %s: disableLocalAuth must be true (the app uses its managed identity)", r.file, r.symbol))
			}
		case "Microsoft.KeyVault/vaults":
			vaults++
			if v, _ := driftPropertyValue(r.body, "enableRbacAuthorization"); v != "true" {
				problems = append(problems, fmt.Sprintf("%s: Key Vault %s: enableRbacAuthorization must be true (the app reads secrets through a role assignment)", r.file, r.symbol))
			}
		}
	}
	if namespaces == 0 || vaults == 0 {
		problems = append(problems, fmt.Sprintf("infra/**/*.bicep declares %d Service Bus namespaces and %d Key Vaults, want one each", namespaces, vaults))
	}
	return problems
}

func TestDriftServices(t *testing.T) {
	r := driftLoadRepo(t)
	driftReport(t, driftCheckServices(r.bicep))
}

// driftCheckQueues: every queue a trigger binds exists in Bicep with sessions, duplicate detection and
// dead-lettering; every queue Bicep creates is bound by a trigger; every trigger has sessions on
// and the identity-based connection.
func driftCheckQueues(funcs map[string]driftFunctionJSON, files map[string]string) []string {
	queues, problems := driftBicepQueues(files)
	byName := map[string]driftBicepQueue{}
	for _, q := range queues {
		if _, dup := byName[q.name]; dup {
			problems = append(problems, fmt.Sprintf("queue %s is declared twice in Bicep", q.name))
		}
		byName[q.name] = q
		for _, want := range []struct{ key, value string }{
			{"requiresSession", "true"},
			{"requiresDuplicateDetection", "true"},
			{"deadLetteringOnMessageExpiration", "true"},
		} {
			if v, _ := driftPropertyValue(q.props, want.key); v != want.value {
				problems = append(problems, fmt.Sprintf("queue %s (%s): %s must be %s, got %q", q.name, q.file, want.key, want.value, v))
			}
		}
		for _, key := range []string{"maxDeliveryCount", "lockDuration", "duplicateDetectionHistoryTimeWindow", "defaultMessageTimeToLive"} {
			if _, ok := driftPropertyValue(q.props, key); !ok {
				problems = append(problems, fmt.Sprintf("queue %s (%s): %s is not set", q.name, q.file, key))
			}
		}
		// servicebus.Send mixes sessions in one batch, which a partitioned queue refuses.
		if v, _ := driftPropertyValue(q.props, "enablePartitioning"); v == "true" {
			problems = append(problems, fmt.Sprintf("queue %s (%s): enablePartitioning must be false (a send batch mixes sessions)", q.name, q.file))
		}
		// The app completes a message with a delayed copy from its third delivery on
		// (shared/delivery): fewer deliveries dead-letter it before that.
		if v, _ := driftPropertyValue(q.props, "maxDeliveryCount"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				n = driftIntParamFloor(files[q.file], v)
			}
			if n < 3 {
				problems = append(problems, fmt.Sprintf("queue %s (%s): maxDeliveryCount %s may be below 3: a failing message would be dead-lettered before its delayed copy", q.name, q.file, v))
			}
		}
	}
	bound := map[string]bool{}
	for _, fn := range driftSortedKeys(funcs) {
		for _, b := range funcs[fn].Bindings {
			if !strings.EqualFold(b.Type, "serviceBusTrigger") {
				continue
			}
			if b.QueueName == "" {
				problems = append(problems, fmt.Sprintf("functions/%s: Service Bus trigger has no queueName (topics are not provisioned)", fn))
				continue
			}
			if strings.Contains(b.QueueName, "%") {
				problems = append(problems, fmt.Sprintf("functions/%s: queueName %q is an app-setting expression; use the literal queue name so it can be checked against Bicep", fn, b.QueueName))
				continue
			}
			bound[b.QueueName] = true
			if _, ok := byName[b.QueueName]; !ok {
				problems = append(problems, fmt.Sprintf("functions/%s binds queue %q, which Bicep does not create", fn, b.QueueName))
			}
			if b.IsSessionsEnabled == nil || !*b.IsSessionsEnabled {
				problems = append(problems, fmt.Sprintf("functions/%s: Service Bus trigger must set isSessionsEnabled: true (the queues require sessions)", fn))
			}
			if b.Connection != "ServiceBusConnection" {
				problems = append(problems, fmt.Sprintf("functions/%s: Service Bus trigger connection must be \"ServiceBusConnection\", got %q", fn, b.Connection))
			}
		}
	}
	for _, q := range queues {
		if !bound[q.name] {
			problems = append(problems, fmt.Sprintf("Bicep creates queue %q but no function.json trigger binds it", q.name))
		}
	}
	sort.Strings(problems)
	return problems
}

// ---------------------------------------------------------------------------------------------
// Check: function folders <-> handler routes
// ---------------------------------------------------------------------------------------------

func driftCheckRoutes(folders, served []string) []string {
	var problems []string
	for _, f := range folders {
		if !slices.Contains(served, f) {
			problems = append(problems, fmt.Sprintf("functions/%s has no handler route (functionNames)", f))
		}
	}
	for _, s := range served {
		if !slices.Contains(folders, s) {
			problems = append(problems, fmt.Sprintf("handler serves %q but there is no functions/%s/function.json: the host never calls it", s, s))
		}
	}
	return problems
}

// ---------------------------------------------------------------------------------------------
// Check: role assignments
// ---------------------------------------------------------------------------------------------

var driftGuidLiteral = regexp.MustCompile(`'([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})'`)
var driftMemberRef = regexp.MustCompile(`\b([A-Za-z_]\w*)\.([A-Za-z_]\w*)\b`)

// driftCheckRoles: the roles assigned in Bicep are exactly driftRequiredRoles, each assignment is scoped to
// a resource (not a resource group or subscription) and to a service principal, and no other role
// id appears anywhere in the infrastructure.
func driftCheckRoles(files map[string]string, want map[string]string) []string {
	var problems []string
	assigned := map[string]bool{}
	for _, r := range driftResources(files) {
		if r.typ != "Microsoft.Authorization/roleAssignments" || r.existing {
			continue
		}
		v, ok := driftPropertyValue(r.body, "roleDefinitionId")
		if !ok {
			problems = append(problems, fmt.Sprintf("%s: role assignment %s has no roleDefinitionId", r.file, r.symbol))
			continue
		}
		id := ""
		if m := driftGuidLiteral.FindStringSubmatch(v); m != nil {
			id = strings.ToLower(m[1])
		} else {
			// roleDefinitionId: subscriptionResourceId('...roleDefinitions', roleIds.someRole)
			for _, m := range driftMemberRef.FindAllStringSubmatch(v, -1) {
				obj, ok := driftObjectVar(files[r.file], m[1])
				if !ok {
					continue
				}
				rv, ok := driftPropertyValue(obj, m[2])
				if !ok {
					continue
				}
				if g := driftGuidLiteral.FindStringSubmatch(rv); g != nil {
					id = strings.ToLower(g[1])
				}
			}
		}
		if id == "" {
			problems = append(problems, fmt.Sprintf("%s: role assignment %s: cannot tell which role %q is (use a GUID literal or a var object of GUIDs)", r.file, r.symbol, v))
			continue
		}
		assigned[id] = true
		if _, ok := want[id]; !ok {
			problems = append(problems, fmt.Sprintf("%s: role assignment %s grants %s (%s), which the code does not need", r.file, r.symbol, id, driftRoleName(id)))
		}
		scope, ok := driftPropertyValue(r.body, "scope")
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("%s: role assignment %s has no scope: it would apply to the whole resource group", r.file, r.symbol))
		case strings.Contains(scope, "resourceGroup(") || strings.Contains(scope, "subscription("):
			problems = append(problems, fmt.Sprintf("%s: role assignment %s is scoped to %s: scope it to the resource", r.file, r.symbol, scope))
		default:
			// scope: a resource symbol of the same file (queues[i] for a loop).
			sym := strings.TrimSpace(scope)
			if i := strings.IndexByte(sym, '['); i >= 0 {
				sym = sym[:i]
			}
			typ := ""
			for _, o := range driftResources(map[string]string{r.file: files[r.file]}) {
				if o.symbol == sym {
					typ = o.typ
				}
			}
			if wantTyp, ok := driftRoleScopes[id]; ok && !strings.EqualFold(typ, wantTyp) {
				if typ == "" {
					typ = "not a resource of " + r.file
				}
				problems = append(problems, fmt.Sprintf("%s: role assignment %s grants %s on %s (%s): scope it to a %s", r.file, r.symbol, driftRoleName(id), scope, typ, wantTyp))
			}
		}
		if pt, _ := driftPropertyValue(r.body, "principalType"); pt != "'ServicePrincipal'" {
			problems = append(problems, fmt.Sprintf("%s: role assignment %s: principalType must be 'ServicePrincipal' (the app's managed identity), got %q", r.file, r.symbol, pt))
		}
		if name, _ := driftPropertyValue(r.body, "name"); !strings.HasPrefix(name, "guid(") {
			problems = append(problems, fmt.Sprintf("%s: role assignment %s: name must be guid(scope.id, principalId, roleId) so it is idempotent, got %q", r.file, r.symbol, name))
		}
	}
	for _, id := range driftSortedKeys(want) {
		if !assigned[id] {
			problems = append(problems, fmt.Sprintf("role %s (%s) is needed by the code but no role assignment in Bicep grants it", id, want[id]))
		}
	}
	for _, name := range driftSortedKeys(files) {
		for _, m := range driftGuidLiteral.FindAllStringSubmatch(driftStripComments(files[name]), -1) {
			id := strings.ToLower(m[1])
			if _, ok := want[id]; !ok {
				problems = append(problems, fmt.Sprintf("%s mentions role/GUID %s (%s), which is not in the required role table", name, id, driftRoleName(id)))
			}
		}
	}
	sort.Strings(problems)
	return slices.Compact(problems)
}

// ---------------------------------------------------------------------------------------------
// Check: azure.yaml <-> packaging <-> host.json
// ---------------------------------------------------------------------------------------------

func driftYamlValue(src, key string) string {
	m := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(key) + `:\s*(\S+)\s*$`).FindStringSubmatch(src)
	if m == nil {
		return ""
	}
	v, err := strconv.Unquote(m[1])
	if err != nil {
		return strings.Trim(m[1], `'`)
	}
	return v
}

// driftCheckPackaging: azd deploys the zip scripts/package writes, as a custom-language function
// service, and the zip's executable is the one host.json starts.
func driftCheckPackaging(azureYAML, packageScript, hostJSON string) []string {
	var problems []string
	if v := driftYamlValue(azureYAML, "host"); v != "function" {
		problems = append(problems, fmt.Sprintf("azure.yaml: service host must be function, got %q", v))
	}
	if v := driftYamlValue(azureYAML, "language"); v != "custom" {
		problems = append(problems, fmt.Sprintf("azure.yaml: service language must be custom (azd builds nothing; scripts/package does), got %q", v))
	}
	dist := driftYamlValue(azureYAML, "dist")
	if !strings.HasSuffix(dist, ".zip") {
		problems = append(problems, fmt.Sprintf("azure.yaml: dist must be the zip scripts/package writes, got %q", dist))
	} else if !regexp.MustCompile(`-out\s+` + regexp.QuoteMeta(dist) + `\b`).MatchString(packageScript) {
		problems = append(problems, fmt.Sprintf("azure.yaml deploys %s but scripts/package does not write it (-out %s)", dist, dist))
	}
	if !regexp.MustCompile(`(?m)^\s*prepackage:`).MatchString(azureYAML) || !strings.Contains(azureYAML, "scripts/package") {
		problems = append(problems, "azure.yaml: the service needs a prepackage hook running scripts/package")
	}
	var host struct {
		CustomHandler struct {
			Description struct {
				DefaultExecutablePath string `json:"defaultExecutablePath"`
			} `json:"description"`
		} `json:"customHandler"`
	}
	if err := json.Unmarshal([]byte(hostJSON), &host); err != nil {
		problems = append(problems, fmt.Sprintf("host.json: %v", err))
	} else if exe := host.CustomHandler.Description.DefaultExecutablePath; exe == "" {
		problems = append(problems, "host.json: customHandler.description.defaultExecutablePath is not set")
	} else if !regexp.MustCompile(`-handler\s+\S*\b` + regexp.QuoteMeta(exe) + `\b`).MatchString(packageScript) {
		problems = append(problems, fmt.Sprintf("host.json starts %q but scripts/package does not package an executable of that name", exe))
	}
	return problems
}

// driftCheckEventsURL: the EVENTS_URL output an administrator gives the store is the events
// function's real route (host.json routePrefix + function.json route).
func driftCheckEventsURL(mainBicep, hostJSON string, events driftFunctionJSON) []string {
	m := regexp.MustCompile(`(?m)^output\s+EVENTS_URL\s+string\s*=\s*'\$\{[^}]+\}(/[^']*)'`).FindStringSubmatch(driftStripComments(mainBicep))
	if m == nil {
		return []string{"infra/main.bicep: no `output EVENTS_URL string = '${<app uri>}/<path>'`"}
	}
	var host struct {
		Extensions struct {
			HTTP struct {
				RoutePrefix *string `json:"routePrefix"`
			} `json:"http"`
		} `json:"extensions"`
	}
	if err := json.Unmarshal([]byte(hostJSON), &host); err != nil {
		return []string{fmt.Sprintf("host.json: %v", err)}
	}
	prefix := "api"
	if host.Extensions.HTTP.RoutePrefix != nil {
		prefix = *host.Extensions.HTTP.RoutePrefix
	}
	route := ""
	for _, b := range events.Bindings {
		if strings.EqualFold(b.Type, "httpTrigger") {
			route = b.Route
		}
	}
	if route == "" {
		return []string{"functions/events has no httpTrigger with a route"}
	}
	want := "/" + strings.Trim(prefix+"/"+route, "/")
	if m[1] != want {
		return []string{fmt.Sprintf("infra/main.bicep EVENTS_URL ends in %q but the events function answers on %q", m[1], want)}
	}
	return nil
}

// driftCheckParametersFile: infra/main.parameters.json (what azd passes) names only parameters
// main.bicep declares (ARM rejects unknown ones), and every main.bicep parameter without a default
// is either passed there or generated by azd.
func driftCheckParametersFile(mainBicep, parametersJSON string) []string {
	var f struct {
		Parameters map[string]json.RawMessage `json:"parameters"`
	}
	if err := json.Unmarshal([]byte(parametersJSON), &f); err != nil {
		return []string{fmt.Sprintf("infra/main.parameters.json: %v", err)}
	}
	src := driftStripComments(mainBicep)
	decl := regexp.MustCompile(`(?m)^param\s+(\w+)\s+\w+[^=\n]*?(=.*)?$`)
	var problems []string
	declared := map[string]bool{}
	prev := 0
	for _, m := range decl.FindAllStringSubmatchIndex(src, -1) {
		name := src[m[2]:m[3]]
		declared[name] = true
		hasDefault := m[4] >= 0
		decorators := src[prev:m[0]]
		prev = m[1]
		_, passed := f.Parameters[name]
		if !hasDefault && !passed && !strings.Contains(decorators, "type: 'generate'") {
			problems = append(problems, fmt.Sprintf("main.bicep parameter %s has no default and infra/main.parameters.json does not pass it", name))
		}
	}
	for _, name := range driftSortedKeys(f.Parameters) {
		if !declared[name] {
			problems = append(problems, fmt.Sprintf("infra/main.parameters.json passes %s, which main.bicep does not declare", name))
		}
	}
	return problems
}

// ---------------------------------------------------------------------------------------------
// The tests on the real files
// ---------------------------------------------------------------------------------------------

func TestDriftSettings(t *testing.T) {
	r := driftLoadRepo(t)
	settings, problems := driftBicepAppSettings(r.bicep)
	problems = append(problems, driftCheckSettings(config.Known(), settings, driftConnectionNames(r.functions))...)
	driftReport(t, problems)
}

func TestDriftQueues(t *testing.T) {
	r := driftLoadRepo(t)
	driftReport(t, driftCheckQueues(r.functions, r.bicep))
}

func TestDriftRoutes(t *testing.T) {
	r := driftLoadRepo(t)
	driftReport(t, driftCheckRoutes(driftSortedKeys(r.functions), functionNames))
}

func TestDriftRoles(t *testing.T) {
	r := driftLoadRepo(t)
	driftReport(t, driftCheckRoles(r.bicep, driftRequiredRoles))
}

func TestDriftLocalSettingsExample(t *testing.T) {
	r := driftLoadRepo(t)
	driftReport(t, driftCheckLocalSettingsExample(config.Known(), []byte(r.read(t, "local.settings.json.example"))))
}

func TestDriftEventsURL(t *testing.T) {
	r := driftLoadRepo(t)
	events, ok := r.functions["events"]
	if !ok {
		t.Fatal("no functions/events")
	}
	driftReport(t, driftCheckEventsURL(r.read(t, "infra/main.bicep"), r.read(t, "host.json"), events))
}

func TestDriftParametersFile(t *testing.T) {
	r := driftLoadRepo(t)
	driftReport(t, driftCheckParametersFile(r.read(t, "infra/main.bicep"), r.read(t, "infra/main.parameters.json")))
}

// driftMaxSessionIdle bounds host.json's serviceBus.sessionIdleTimeout. The session
// processor waits that long for another message of the session it holds before it
// closes the session and takes the next one (Microsoft Learn:
// ServiceBusSessionProcessorOptions.SessionIdleTimeout; unset, it waits the try timeout).
// The app's sessions mostly hold one message (a live event's entity, an import chunk),
// so each of an instance's maxConcurrentSessions slots idles that long after every
// message: 30 s would cap an instance at 8 messages per 30 s.
const driftMaxSessionIdle = 2 * time.Second

// driftCheckHostServiceBus checks host.json's Service Bus settings the app's session
// layout depends on.
func driftCheckHostServiceBus(hostJSON string) []string {
	var h struct {
		Extensions struct {
			ServiceBus map[string]any `json:"serviceBus"`
		} `json:"extensions"`
	}
	if err := json.Unmarshal([]byte(hostJSON), &h); err != nil {
		return []string{fmt.Sprintf("host.json: %v", err)}
	}
	v, ok := h.Extensions.ServiceBus["sessionIdleTimeout"].(string)
	if !ok {
		return []string{"host.json: extensions.serviceBus.sessionIdleTimeout is not set (unset, a session slot waits the try timeout, a minute, after each message)"}
	}
	d, err := driftTimeSpan(v)
	switch {
	case err != nil:
		return []string{fmt.Sprintf("host.json: extensions.serviceBus.sessionIdleTimeout %q: %v", v, err)}
	case d <= 0 || d > driftMaxSessionIdle:
		return []string{fmt.Sprintf("host.json: extensions.serviceBus.sessionIdleTimeout %s must be above 0 and at most %s: the app's sessions hold one message each, and every session slot idles that long after it", d, driftMaxSessionIdle)}
	}
	return nil
}

// driftTimeSpan parses a .NET TimeSpan as host.json writes it: [d.]hh:mm:ss[.fffffff].
func driftTimeSpan(s string) (time.Duration, error) {
	var days int
	if i := strings.IndexByte(s, '.'); i >= 0 && i < strings.IndexByte(s, ':') {
		n, err := strconv.Atoi(s[:i])
		if err != nil {
			return 0, fmt.Errorf("not a TimeSpan")
		}
		days, s = n, s[i+1:]
	}
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return 0, fmt.Errorf("not a TimeSpan (hh:mm:ss)")
	}
	h, err1 := strconv.Atoi(parts[0])
	m, err2 := strconv.Atoi(parts[1])
	sec, err3 := strconv.ParseFloat(parts[2], 64)
	if err1 != nil || err2 != nil || err3 != nil || m > 59 || sec >= 60 {
		return 0, fmt.Errorf("not a TimeSpan (hh:mm:ss)")
	}
	return time.Duration(days)*24*time.Hour + time.Duration(h)*time.Hour + time.Duration(m)*time.Minute +
		time.Duration(sec*float64(time.Second)), nil
}

func TestDriftHostServiceBus(t *testing.T) {
	r := driftLoadRepo(t)
	driftReport(t, driftCheckHostServiceBus(r.read(t, "host.json")))
}

func TestDriftPackaging(t *testing.T) {
	r := driftLoadRepo(t)
	driftReport(t, driftCheckPackaging(r.read(t, "azure.yaml"), r.read(t, "scripts/package"), r.read(t, "host.json")))
}

func driftReport(t *testing.T, problems []string) {
	t.Helper()
	for _, p := range problems {
		t.Error(p)
	}
}

// ---------------------------------------------------------------------------------------------
// Each check fails on a deliberately broken copy of the real files
// ---------------------------------------------------------------------------------------------

// driftMustReplace returns files with old replaced by new in the file that contains old (exactly
// once), failing the test when the real files no longer contain old: the breakage must stay real.
func driftMustReplace(t *testing.T, files map[string]string, old, new string) map[string]string {
	t.Helper()
	out := map[string]string{}
	hits := 0
	for name, src := range files {
		if n := strings.Count(src, old); n > 0 {
			hits += n
			src = strings.Replace(src, old, new, 1)
		}
		out[name] = src
	}
	if hits != 1 {
		t.Fatalf("breaking the Bicep: %q occurs %d times, want exactly 1", old, hits)
	}
	return out
}

func driftExpectProblem(t *testing.T, what string, problems []string, substrings ...string) {
	t.Helper()
	for _, p := range problems {
		all := true
		for _, s := range substrings {
			all = all && strings.Contains(p, s)
		}
		if all {
			return
		}
	}
	t.Errorf("%s: the check did not report it (want a problem containing %q); got %q", what, substrings, problems)
}

func driftCopyFunctions(funcs map[string]driftFunctionJSON) map[string]driftFunctionJSON {
	out := map[string]driftFunctionJSON{}
	for k, v := range funcs {
		out[k] = driftFunctionJSON{Bindings: slices.Clone(v.Bindings)}
	}
	return out
}

func TestDriftChecksCatchBreakage(t *testing.T) {
	r := driftLoadRepo(t)
	known := config.Known()
	conns := driftConnectionNames(r.functions)

	settingsOf := func(files map[string]string) []string {
		t.Helper()
		s, problems := driftBicepAppSettings(files)
		if len(problems) > 0 {
			t.Fatalf("reading settings: %v", problems)
		}
		return s
	}

	t.Run("settings", func(t *testing.T) {
		for _, s := range known {
			if s.Required && !s.LocalOnly && !s.Secret && !slices.Contains(driftPlatformSetSettings, s.Name) {
				broken := driftMustReplace(t, r.bicep, "\n  "+s.Name+":", "\n  REMOVED_"+s.Name+":")
				driftExpectProblem(t, "required "+s.Name+" removed from Bicep", driftCheckSettings(known, settingsOf(broken), conns), s.Name, "required")
			}
		}
		withSecret := driftMustReplace(t, r.bicep, "\n  KEY_VAULT_URL:", "\n  DATAVERSE_CLIENT_SECRET: 'x'\n  KEY_VAULT_URL:")
		driftExpectProblem(t, "secret as an app setting", driftCheckSettings(known, settingsOf(withSecret), conns), "DATAVERSE_CLIENT_SECRET", "secret")
		typo := driftMustReplace(t, r.bicep, "\n  DATAVERSE_URL:", "\n  DATAVERSE_URI:")
		driftExpectProblem(t, "typo in a setting name", driftCheckSettings(known, settingsOf(typo), conns), "DATAVERSE_URI", "does not read")
		local := driftMustReplace(t, r.bicep, "\n  KEY_VAULT_URL:", "\n  LISTEN_ADDR: '0.0.0.0:80'\n  KEY_VAULT_URL:")
		driftExpectProblem(t, "local-only setting in Azure", driftCheckSettings(known, settingsOf(local), conns), "LISTEN_ADDR", "local-only")
		flex := driftMustReplace(t, r.bicep, "\n  KEY_VAULT_URL:", "\n  FUNCTIONS_WORKER_RUNTIME: 'custom'\n  KEY_VAULT_URL:")
		driftExpectProblem(t, "FUNCTIONS_WORKER_RUNTIME on Flex", driftCheckSettings(known, settingsOf(flex), conns), "FUNCTIONS_WORKER_RUNTIME", "Flex")
		noConn := driftMustReplace(t, r.bicep, "\n  ServiceBusConnection__credential:", "\n  Removed__credential:")
		driftExpectProblem(t, "trigger connection without identity settings", driftCheckSettings(known, settingsOf(noConn), conns), "ServiceBusConnection__credential")
		// A new setting the code reads (Required, or optional without a default) must reach Bicep.
		grown := append(slices.Clone(known), config.Setting{Name: "NEW_REQUIRED_SETTING", Required: true}, config.Setting{Name: "NEW_OPTIONAL_NO_DEFAULT"})
		got := driftCheckSettings(grown, settingsOf(r.bicep), conns)
		driftExpectProblem(t, "new required setting", got, "NEW_REQUIRED_SETTING")
		driftExpectProblem(t, "new optional setting without default", got, "NEW_OPTIONAL_NO_DEFAULT")
		dropped := driftMustReplace(t, r.bicep, "\n  AUTO_SYNC_ENABLED:", "\n  REMOVED_AUTO_SYNC_ENABLED:")
		driftExpectProblem(t, "a setting with a default dropped", driftCheckSettings(known, settingsOf(dropped), conns), "AUTO_SYNC_ENABLED", "not an app setting")
		if _, problems := driftBicepAppSettings(driftMustReplace(t, r.bicep, "var appSettings = {", "var settingsObject = {")); len(problems) == 0 {
			t.Error("renaming var appSettings: the settings reader did not notice it lost sight of the settings")
		}
		extra := map[string]string{}
		for k, v := range r.bicep {
			extra[k] = v
		}
		extra["infra/modules/extra.bicep"] = "resource more 'Microsoft.Web/sites/config@2024-04-01' = {\n  name: 'appsettings'\n  properties: {\n    FUNCTIONS_WORKER_RUNTIME: 'custom'\n  }\n}\n"
		if _, problems := driftBicepAppSettings(extra); len(problems) == 0 || !strings.Contains(problems[0], "sites/config") {
			t.Errorf("an appsettings config resource: %v", problems)
		}
	})

	t.Run("local.settings.json.example", func(t *testing.T) {
		values := map[string]string{}
		for _, s := range known {
			if !s.AzureOnly {
				values[s.Name] = ""
			}
		}
		complete, _ := json.Marshal(map[string]any{"Values": values})
		if p := driftCheckLocalSettingsExample(known, complete); len(p) != 0 {
			t.Fatalf("a complete example reported problems: %v", p)
		}
		var victim string
		for _, s := range known {
			if !s.AzureOnly {
				victim = s.Name
				break
			}
		}
		delete(values, victim)
		missing, _ := json.Marshal(map[string]any{"Values": values})
		driftExpectProblem(t, "setting missing from the example", driftCheckLocalSettingsExample(known, missing), victim)
	})

	t.Run("queues", func(t *testing.T) {
		if p := driftCheckQueues(r.functions, r.bicep); len(p) != 0 {
			t.Skipf("the real files already drift (TestDriftQueues reports it): %v", p)
		}
		noSession := driftMustReplace(t, r.bicep, "requiresSession: true", "requiresSession: false")
		driftExpectProblem(t, "requiresSession false", driftCheckQueues(r.functions, noSession), "requiresSession")
		dropped := driftMustReplace(t, r.bicep, "requiresSession: true\n", "")
		driftExpectProblem(t, "requiresSession removed", driftCheckQueues(r.functions, dropped), "requiresSession")
		noDedup := driftMustReplace(t, r.bicep, "requiresDuplicateDetection: true", "requiresDuplicateDetection: false")
		driftExpectProblem(t, "duplicate detection off", driftCheckQueues(r.functions, noDedup), "requiresDuplicateDetection")
		fewDeliveries := driftMustReplace(t, r.bicep, "@minValue(3)\n@maxValue(2000)\nparam maxDeliveryCount", "@minValue(1)\n@maxValue(2000)\nparam maxDeliveryCount")
		driftExpectProblem(t, "maxDeliveryCount allowed below 3", driftCheckQueues(r.functions, fewDeliveries), "maxDeliveryCount", "below 3")
		literal := driftMustReplace(t, r.bicep, "maxDeliveryCount: maxDeliveryCount", "maxDeliveryCount: 2")
		driftExpectProblem(t, "maxDeliveryCount 2", driftCheckQueues(r.functions, literal), "maxDeliveryCount 2")
		partitioned := driftMustReplace(t, r.bicep, "enablePartitioning: false", "enablePartitioning: true")
		driftExpectProblem(t, "partitioned queues", driftCheckQueues(r.functions, partitioned), "enablePartitioning")
		noDLQ := driftMustReplace(t, r.bicep, "deadLetteringOnMessageExpiration: true", "deadLetteringOnMessageExpiration: false")
		driftExpectProblem(t, "expiry without dead-lettering", driftCheckQueues(r.functions, noDLQ), "deadLetteringOnMessageExpiration")
		noOrders := driftMustReplace(t, r.bicep, "  'orders'\n", "")
		driftExpectProblem(t, "orders queue missing from Bicep", driftCheckQueues(r.functions, noOrders), `"orders"`, "does not create")

		funcs := driftCopyFunctions(r.functions)
		var fn string
		for _, name := range driftSortedKeys(funcs) {
			for i, b := range funcs[name].Bindings {
				if b.Type == "serviceBusTrigger" && fn == "" {
					fn = name
					off := false
					funcs[name].Bindings[i].IsSessionsEnabled = &off
					funcs[name].Bindings[i].Connection = "OtherConnection"
				}
			}
		}
		if fn == "" {
			t.Fatal("no Service Bus trigger among the function folders")
		}
		got := driftCheckQueues(funcs, r.bicep)
		driftExpectProblem(t, "trigger without sessions", got, "functions/"+fn, "isSessionsEnabled")
		driftExpectProblem(t, "trigger on another connection", got, "functions/"+fn, "OtherConnection")

		extra := driftCopyFunctions(r.functions)
		extra["returns"] = driftFunctionJSON{Bindings: []driftBinding{{Type: "serviceBusTrigger", Name: "msg", QueueName: "returns", Connection: "ServiceBusConnection", IsSessionsEnabled: &[]bool{true}[0]}}}
		driftExpectProblem(t, "trigger on a queue Bicep lacks", driftCheckQueues(extra, r.bicep), `"returns"`, "does not create")

		unbound := driftCopyFunctions(r.functions)
		delete(unbound, fn)
		driftExpectProblem(t, "queue nobody binds", driftCheckQueues(unbound, r.bicep), "no function.json trigger binds it")
	})

	t.Run("routes", func(t *testing.T) {
		folders := driftSortedKeys(r.functions)
		driftExpectProblem(t, "folder without a route", driftCheckRoutes(append(slices.Clone(folders), "refunds"), folders), "functions/refunds")
		driftExpectProblem(t, "route without a folder", driftCheckRoutes(folders, append(slices.Clone(folders), "refunds")), `"refunds"`)
	})

	t.Run("roles", func(t *testing.T) {
		if p := driftCheckRoles(r.bicep, driftRequiredRoles); len(p) != 0 {
			t.Skipf("the real files already drift (TestDriftRoles reports it): %v", p)
		}
		contributor := driftMustReplace(t, r.bicep, "b7e6dc6d-f1e8-4753-8033-0f276bb0955b", "b24988ac-6180-42a0-ab88-20f7382dd24c")
		got := driftCheckRoles(contributor, driftRequiredRoles)
		driftExpectProblem(t, "Contributor instead of Blob Data Owner", got, "Contributor")
		driftExpectProblem(t, "Blob Data Owner no longer granted", got, "Storage Blob Data Owner", "no role assignment")
		ownerOnRG := driftMustReplace(t, r.bicep, "scope: vault\n", "scope: resourceGroup()\n")
		driftExpectProblem(t, "assignment on the resource group", driftCheckRoles(ownerOnRG, driftRequiredRoles), "resourceGroup()")
		onNamespace := driftMustReplace(t, r.bicep, "scope: queues[i]\n", "scope: serviceBus\n")
		driftExpectProblem(t, "Data Owner on the whole namespace", driftCheckRoles(onNamespace, driftRequiredRoles), "Service Bus Data Owner", "Microsoft.ServiceBus/namespaces/queues")
		vaultRoleElsewhere := driftMustReplace(t, r.bicep, "scope: vault\n", "scope: storage\n")
		driftExpectProblem(t, "Key Vault Secrets User on the storage account", driftCheckRoles(vaultRoleElsewhere, driftRequiredRoles), "Key Vault Secrets User", "Microsoft.KeyVault/vaults")
		// The code starts needing a role nobody grants.
		more := map[string]string{"974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor"}
		for k, v := range driftRequiredRoles {
			more[k] = v
		}
		driftExpectProblem(t, "a needed role not granted", driftCheckRoles(r.bicep, more), "Storage Queue Data Contributor", "no role assignment")
		// The code stops needing one that is still granted.
		fewer := map[string]string{}
		for k, v := range driftRequiredRoles {
			if v != "Monitoring Metrics Publisher" {
				fewer[k] = v
			}
		}
		driftExpectProblem(t, "a granted role the code does not need", driftCheckRoles(r.bicep, fewer), "Monitoring Metrics Publisher")
	})

	t.Run("events URL", func(t *testing.T) {
		mainBicep, host, events := r.read(t, "infra/main.bicep"), r.read(t, "host.json"), r.functions["events"]
		if p := driftCheckEventsURL(mainBicep, host, events); len(p) != 0 {
			t.Skipf("the real files already drift (TestDriftEventsURL reports it): %v", p)
		}
		driftExpectProblem(t, "EVENTS_URL on another path", driftCheckEventsURL(strings.Replace(mainBicep, "/api/events/{entity}'", "/api/webhook/{entity}'", 1), host, events), "/api/webhook/{entity}")
		driftExpectProblem(t, "route prefix changed in host.json", driftCheckEventsURL(mainBicep, strings.Replace(host, `"routePrefix": "api"`, `"routePrefix": "nop"`, 1), events), "/nop/events/{entity}")
	})

	t.Run("host.json Service Bus", func(t *testing.T) {
		host := r.read(t, "host.json")
		if p := driftCheckHostServiceBus(host); len(p) != 0 {
			t.Skipf("the real file already drifts (TestDriftHostServiceBus reports it): %v", p)
		}
		m := regexp.MustCompile(`"sessionIdleTimeout":\s*"([^"]*)",?`).FindStringSubmatch(host)
		if m == nil {
			t.Fatal("host.json has no sessionIdleTimeout to change")
		}
		cur := m[1]
		long := strings.Replace(host, `"sessionIdleTimeout": "`+cur+`"`, `"sessionIdleTimeout": "00:00:30"`, 1)
		driftExpectProblem(t, "a 30 s session idle timeout", driftCheckHostServiceBus(long), "sessionIdleTimeout", "30s")
		gone := strings.Replace(host, m[0], ``, 1)
		driftExpectProblem(t, "no session idle timeout", driftCheckHostServiceBus(gone), "sessionIdleTimeout", "not set")
		if d, err := driftTimeSpan("1.00:00:01.5"); err != nil || d != 24*time.Hour+1500*time.Millisecond {
			t.Errorf("driftTimeSpan(1.00:00:01.5) = %s, %v", d, err)
		}
	})

	t.Run("services", func(t *testing.T) {
		if p := driftCheckServices(r.bicep); len(p) != 0 {
			t.Skipf("the real files already drift (TestDriftServices reports it): %v", p)
		}
		basic := driftMustReplace(t, r.bicep, "    name: 'Standard'\n    tier: 'Standard'\n", "    name: 'Basic'\n    tier: 'Basic'\n")
		driftExpectProblem(t, "Service Bus Basic", driftCheckServices(basic), "'Basic'", "Standard or Premium")
		sas := driftMustReplace(t, r.bicep, "    disableLocalAuth: true\n    minimumTlsVersion: '1.2'\n    publicNetworkAccess", "    disableLocalAuth: false\n    minimumTlsVersion: '1.2'\n    publicNetworkAccess")
		driftExpectProblem(t, "Service Bus with SAS keys", driftCheckServices(sas), "disableLocalAuth")
		policies := driftMustReplace(t, r.bicep, "enableRbacAuthorization: true", "enableRbacAuthorization: false")
		driftExpectProblem(t, "Key Vault with access policies", driftCheckServices(policies), "enableRbacAuthorization")
	})

	t.Run("parameters file", func(t *testing.T) {
		mainBicep, params := r.read(t, "infra/main.bicep"), r.read(t, "infra/main.parameters.json")
		if p := driftCheckParametersFile(mainBicep, params); len(p) != 0 {
			t.Skipf("the real files already drift (TestDriftParametersFile reports it): %v", p)
		}
		driftExpectProblem(t, "parameter renamed in Bicep", driftCheckParametersFile(strings.Replace(mainBicep, "param dataverseUrl string", "param dataverseEnvironmentUrl string", 1), params), "dataverseUrl", "does not declare")
		driftExpectProblem(t, "required parameter not passed", driftCheckParametersFile(mainBicep, strings.Replace(params, `"storeCurrencyCode"`, `"storeCurrency"`, 1)), "storeCurrencyCode", "does not pass")
	})

	t.Run("packaging", func(t *testing.T) {
		yaml, pkg, host := r.read(t, "azure.yaml"), r.read(t, "scripts/package"), r.read(t, "host.json")
		if p := driftCheckPackaging(yaml, pkg, host); len(p) != 0 {
			t.Skipf("the real files already drift (TestDriftPackaging reports it): %v", p)
		}
		driftExpectProblem(t, "azure.yaml deploys another zip", driftCheckPackaging(strings.Replace(yaml, "dist: dist/app.zip", "dist: dist/other.zip", 1), pkg, host), "dist/other.zip")
		driftExpectProblem(t, "azure.yaml lets azd build", driftCheckPackaging(strings.Replace(yaml, "\n    language: custom", "\n    language: go", 1), pkg, host), "language")
		driftExpectProblem(t, "host.json starts another executable", driftCheckPackaging(yaml, pkg, strings.Replace(host, `"handler"`, `"server"`, 1)), `"server"`)
	})
}

// ---------------------------------------------------------------------------------------------
// Check: secrets read from Key Vault by name are created there by the Bicep
// ---------------------------------------------------------------------------------------------

// driftCheckVaultSecrets: every secret setting the app reads from Key Vault by a *_NAME (or
// *_SECRET_NAME) companion setting has an optional Key Vault secret in the Bicep whose name
// parameter defaults to the companion's default, so `azd up` can store it and the app finds
// it under the name it looks for.
func driftCheckVaultSecrets(known []config.Setting, bicep map[string]string) []string {
	byName := map[string]config.Setting{}
	for _, s := range known {
		byName[s.Name] = s
	}
	var all strings.Builder
	for _, p := range driftSortedKeys(bicep) {
		all.WriteString(driftStripComments(bicep[p]))
	}
	src := all.String()
	var problems []string
	for _, s := range known {
		if !s.Secret || s.LocalOnly {
			continue
		}
		var companion *config.Setting
		for _, n := range []string{s.Name + "_NAME", s.Name + "_SECRET_NAME", strings.TrimSuffix(s.Name, "_SECRET") + "_SECRET_NAME"} {
			if c, ok := byName[n]; ok && n != s.Name {
				companion = &c
				break
			}
		}
		if companion == nil || companion.Default == "" {
			continue
		}
		decl := regexp.MustCompile(`(?m)^param\s+(\w+)\s+string\s*=\s*'` + regexp.QuoteMeta(companion.Default) + `'`)
		m := decl.FindStringSubmatch(src)
		if m == nil {
			problems = append(problems, fmt.Sprintf("secret %s: no Bicep parameter defaults to its vault name %q (%s)", s.Name, companion.Default, companion.Name))
			continue
		}
		res := regexp.MustCompile(`(?s)'Microsoft\.KeyVault/vaults/secrets@[^']+'\s*=\s*if\s*\([^\n]*\)\s*\{[^}]*?name:\s*` + m[1] + `\b`)
		if !res.MatchString(src) {
			problems = append(problems, fmt.Sprintf("secret %s: no optional Key Vault secret resource is named by parameter %s", s.Name, m[1]))
		}
	}
	return problems
}

func TestDriftVaultSecrets(t *testing.T) {
	r := driftLoadRepo(t)
	driftReport(t, driftCheckVaultSecrets(config.Known(), r.bicep))
	// The check catches a secret the Bicep does not create.
	broken := map[string]string{}
	for p, s := range r.bicep {
		broken[p] = strings.Replace(s, "resource nopDbConnectionResource 'Microsoft.KeyVault/vaults/secrets@2023-07-01'", "resource nopDbConnectionResource 'Microsoft.Storage/storageAccounts@2023-05-01'", 1)
	}
	driftExpectProblem(t, "connection string not in the vault", driftCheckVaultSecrets(config.Known(), broken), "NOP_DB_CONNECTION")
}

// ---------------------------------------------------------------------------------------------
// The host contract: function.json and host.json as docs/operations.md and the Go code need them
// ---------------------------------------------------------------------------------------------

// driftHTTPFunction is an HTTP function as docs/operations.md lists it: its auth level,
// the methods it must take and its route (the function.json form of the public routes).
type driftHTTPFunction struct {
	authLevel string
	methods   []string
	route     string
}

// driftHTTPFunctions: docs/operations.md, "Functions" (sync also answers GET
// /api/sync/{runId}, docs/store-reader.md).
var driftHTTPFunctions = map[string]driftHTTPFunction{
	"events":      {"function", []string{"post"}, "events/{entity}"},
	"sync":        {"admin", []string{"get", "post"}, "sync/{runId?}"},
	"status":      {"admin", []string{"get"}, "status/{entity?}/{id?}"},
	"deadletters": {"admin", []string{"get", "post"}, "deadletters/{entity}/{action?}"},
}

// driftCheckHostContract checks what the host reads from function.json and host.json
// against what the Go code and the docs rely on: the binding names the handler reads
// (req/res, msg, timer), auth levels, methods and routes, one message per invocation
// completed by the host, the every-minute timer, no request forwarding, and the host's
// timeouts above the handler's own (invocationTimeout). functions maps a folder to its
// function.json text.
func driftCheckHostContract(functions map[string]string, hostJSON string) []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	type binding struct {
		Type, Direction, Name, AuthLevel, Route, Schedule, Cardinality string
		Methods                                                        []string
		AutoCompleteMessages                                           *bool
		IsSessionsEnabled                                              *bool
	}
	for name, text := range functions {
		var f struct{ Bindings []binding }
		if err := json.Unmarshal([]byte(text), &f); err != nil {
			bad("functions/%s/function.json: %v", name, err)
			continue
		}
		var trigger *binding
		var out []binding
		for i, b := range f.Bindings {
			if strings.HasSuffix(b.Type, "Trigger") {
				if trigger != nil {
					bad("functions/%s: more than one trigger", name)
				}
				trigger = &f.Bindings[i]
			} else if b.Direction == "out" {
				out = append(out, b)
			}
		}
		if trigger == nil {
			bad("functions/%s: no trigger binding", name)
			continue
		}
		queue := strings.TrimSuffix(name, "-bulk")
		switch {
		case driftHTTPFunctions[name].route != "":
			want := driftHTTPFunctions[name]
			if trigger.Type != "httpTrigger" || trigger.Name != "req" {
				bad("functions/%s: trigger %s %q, want httpTrigger named \"req\" (what the handler reads)", name, trigger.Type, trigger.Name)
			}
			if trigger.AuthLevel != want.authLevel {
				bad("functions/%s: authLevel %q, want %q (docs/operations.md)", name, trigger.AuthLevel, want.authLevel)
			}
			for _, m := range want.methods {
				if !slices.ContainsFunc(trigger.Methods, func(s string) bool { return strings.EqualFold(s, m) }) {
					bad("functions/%s: methods %v leave out %s (docs/operations.md)", name, trigger.Methods, strings.ToUpper(m))
				}
			}
			if trigger.Route != want.route {
				bad("functions/%s: route %q, want %q (docs/operations.md's routes)", name, trigger.Route, want.route)
			}
			if len(out) != 1 || out[0].Type != "http" || out[0].Name != "res" {
				bad("functions/%s: output bindings %+v, want one http binding named \"res\" (what the handler answers in)", name, out)
			}
		case queue == "customers" || queue == "products" || queue == "orders":
			if trigger.Type != "serviceBusTrigger" || trigger.Name != "msg" {
				bad("functions/%s: trigger %s %q, want serviceBusTrigger named \"msg\" (what the handler reads)", name, trigger.Type, trigger.Name)
			}
			if trigger.IsSessionsEnabled == nil || !*trigger.IsSessionsEnabled {
				bad("functions/%s: isSessionsEnabled must be true (docs/operations.md: sessions on)", name)
			}
			if trigger.AutoCompleteMessages != nil && !*trigger.AutoCompleteMessages {
				bad("functions/%s: autoCompleteMessages false: the handler never completes a message itself", name)
			}
			if trigger.Cardinality != "" && !strings.EqualFold(trigger.Cardinality, "one") {
				bad("functions/%s: cardinality %q: the handler takes one message per invocation", name, trigger.Cardinality)
			}
		case name == "autosync":
			if trigger.Type != "timerTrigger" || trigger.Name != "timer" {
				bad("functions/%s: trigger %s %q, want timerTrigger named \"timer\" (what the handler reads)", name, trigger.Type, trigger.Name)
			}
			if trigger.Schedule != "0 * * * * *" {
				bad("functions/%s: schedule %q, want every minute, \"0 * * * * *\" (docs/operations.md)", name, trigger.Schedule)
			}
		default:
			bad("functions/%s: a function the docs do not list", name)
		}
	}

	var h struct {
		FunctionTimeout string `json:"functionTimeout"`
		Extensions      struct {
			HTTP struct {
				RoutePrefix *string `json:"routePrefix"`
			} `json:"http"`
			ServiceBus struct {
				AutoCompleteMessages       *bool  `json:"autoCompleteMessages"`
				MaxAutoLockRenewalDuration string `json:"maxAutoLockRenewalDuration"`
			} `json:"serviceBus"`
		} `json:"extensions"`
		CustomHandler struct {
			EnableForwardingHttpRequest bool `json:"enableForwardingHttpRequest"`
		} `json:"customHandler"`
	}
	if err := json.Unmarshal([]byte(hostJSON), &h); err != nil {
		return append(problems, fmt.Sprintf("host.json: %v", err))
	}
	if h.CustomHandler.EnableForwardingHttpRequest {
		bad("host.json: customHandler.enableForwardingHttpRequest is true: the handler serves the host's invocation requests, not forwarded ones")
	}
	if p := h.Extensions.HTTP.RoutePrefix; p != nil && *p != "api" {
		bad("host.json: extensions.http.routePrefix %q, want \"api\" (docs/operations.md's /api/... routes)", *p)
	}
	if a := h.Extensions.ServiceBus.AutoCompleteMessages; a != nil && !*a {
		bad("host.json: extensions.serviceBus.autoCompleteMessages false: the handler never completes a message itself")
	}
	if d, err := driftTimeSpan(h.FunctionTimeout); err != nil || d <= invocationTimeout {
		bad("host.json: functionTimeout %q must be over the handler's own %s (invocationTimeout), or the host cuts invocations the handler still bounds", h.FunctionTimeout, invocationTimeout)
	}
	if d, err := driftTimeSpan(h.Extensions.ServiceBus.MaxAutoLockRenewalDuration); err != nil || d < invocationTimeout {
		bad("host.json: extensions.serviceBus.maxAutoLockRenewalDuration %q must be at least the handler's %s, or a message's lock runs out while it is written", h.Extensions.ServiceBus.MaxAutoLockRenewalDuration, invocationTimeout)
	}
	return problems
}

func driftFunctionTexts(t *testing.T, r *driftRepo) map[string]string {
	t.Helper()
	out := map[string]string{}
	for name := range r.functions {
		out[name] = r.read(t, filepath.Join("functions", name, "function.json"))
	}
	return out
}

func TestDriftHostContract(t *testing.T) {
	r := driftLoadRepo(t)
	fns := driftFunctionTexts(t, r)
	for name := range driftHTTPFunctions {
		if _, ok := fns[name]; !ok {
			t.Errorf("no functions/%s (docs/operations.md lists it)", name)
		}
	}
	driftReport(t, driftCheckHostContract(fns, r.read(t, "host.json")))
}

// Each rule of driftCheckHostContract fails on a broken copy of the real files.
func TestDriftHostContractCatchBreakage(t *testing.T) {
	r := driftLoadRepo(t)
	fns, host := driftFunctionTexts(t, r), r.read(t, "host.json")
	if p := driftCheckHostContract(fns, host); len(p) != 0 {
		t.Skipf("the real files already drift (TestDriftHostContract reports it): %v", p)
	}
	breakFn := func(fn, old, new string) map[string]string {
		t.Helper()
		if strings.Count(fns[fn], old) != 1 {
			t.Fatalf("functions/%s: %q occurs %d times, want exactly 1", fn, old, strings.Count(fns[fn], old))
		}
		out := maps.Clone(fns)
		out[fn] = strings.Replace(fns[fn], old, new, 1)
		return out
	}
	breakHost := func(old, new string) string {
		t.Helper()
		if strings.Count(host, old) != 1 {
			t.Fatalf("host.json: %q occurs %d times, want exactly 1", old, strings.Count(host, old))
		}
		return strings.Replace(host, old, new, 1)
	}
	for _, c := range []struct {
		what     string
		fns      map[string]string
		host     string
		contains string
	}{
		{"status open to anyone", breakFn("status", `"authLevel": "admin"`, `"authLevel": "anonymous"`), host, "authLevel \"anonymous\""},
		{"events under the admin key", breakFn("events", `"authLevel": "function"`, `"authLevel": "admin"`), host, "authLevel \"admin\""},
		{"orders trigger renamed", breakFn("orders", `"name": "msg"`, `"name": "message"`), host, "named \"msg\""},
		{"status request renamed", breakFn("status", `"name": "req"`, `"name": "request"`), host, "named \"req\""},
		{"sync answer renamed", breakFn("sync", `"name": "res"`, `"name": "$return"`), host, "named \"res\""},
		{"no autocomplete", breakFn("customers", `"autoCompleteMessages": true`, `"autoCompleteMessages": false`), host, "autoCompleteMessages false"},
		{"batches", breakFn("products-bulk", `"autoCompleteMessages": true`, `"autoCompleteMessages": true, "cardinality": "many"`), host, "cardinality"},
		{"sessions off", breakFn("orders-bulk", `"isSessionsEnabled": true`, `"isSessionsEnabled": false`), host, "isSessionsEnabled"},
		{"hourly timer", breakFn("autosync", `"schedule": "0 * * * * *"`, `"schedule": "0 0 * * * *"`), host, "every minute"},
		{"events GET only", breakFn("events", `"methods": ["get", "post", "put", "patch", "delete"]`, `"methods": ["get"]`), host, "leave out POST"},
		{"no entity status route", breakFn("status", `"route": "status/{entity?}/{id?}"`, `"route": "status"`), host, "route \"status\""},
		{"forwarding", fns, breakHost(`"enableForwardingHttpRequest": false`, `"enableForwardingHttpRequest": true`), "enableForwardingHttpRequest"},
		{"host autocomplete off", fns, breakHost(`"autoCompleteMessages": true`, `"autoCompleteMessages": false`), "autoCompleteMessages false"},
		{"function timeout below the handler's", fns, breakHost(`"functionTimeout": "00:10:00"`, `"functionTimeout": "00:05:00"`), "functionTimeout"},
		{"lock renewal below the handler's", fns, breakHost(`"maxAutoLockRenewalDuration": "00:10:00"`, `"maxAutoLockRenewalDuration": "00:01:00"`), "maxAutoLockRenewalDuration"},
		{"route prefix", fns, breakHost(`"routePrefix": "api"`, `"routePrefix": "nop"`), "routePrefix"},
	} {
		driftExpectProblem(t, c.what, driftCheckHostContract(c.fns, c.host), c.contains)
	}
}

// driftCheckLockAndIdentity: the queues' lock lasts between 1 and 5 minutes (Service Bus's
// most; shorter, the host renews it every few seconds and one missed renewal loses the
// message to another instance mid-write), and every identity-based connection and
// azidentity name the user-assigned identity by its client id, not its resource id.
func driftCheckLockAndIdentity(files map[string]string) []string {
	var problems []string
	locks := 0
	for _, name := range driftSortedKeys(files) {
		src := driftStripComments(files[name])
		for _, m := range regexp.MustCompile(`lockDuration\s*:\s*([^\n]+)`).FindAllStringSubmatch(src, -1) {
			locks++
			v := strings.TrimSpace(m[1])
			d := time.Duration(0)
			if p := regexp.MustCompile(`^'PT(?:(\d+)M)?(?:(\d+)S)?'$`).FindStringSubmatch(v); p != nil && (p[1] != "" || p[2] != "") {
				mins, _ := strconv.Atoi(p[1])
				secs, _ := strconv.Atoi(p[2])
				d = time.Duration(mins)*time.Minute + time.Duration(secs)*time.Second
			}
			if d < time.Minute || d > 5*time.Minute {
				problems = append(problems, fmt.Sprintf("%s: lockDuration %s: want a literal ISO 8601 duration from PT1M to PT5M", name, v))
			}
		}
		for _, m := range regexp.MustCompile(`(?m)^\s*(\w+__clientId|AZURE_CLIENT_ID)\s*:\s*(\S+)`).FindAllStringSubmatch(src, -1) {
			if m[2] != "identityClientId" {
				problems = append(problems, fmt.Sprintf("%s: %s is %s, want identityClientId (the identity's client id; a resource id or another value makes every identity-based call fail)", name, m[1], m[2]))
			}
		}
	}
	if locks == 0 {
		problems = append(problems, "infra/**/*.bicep sets no queue lockDuration")
	}
	if !regexp.MustCompile(`(?m)^\s*identityClientId\s*:\s*identity\.outputs\.clientId\s*$`).MatchString(driftStripComments(files["infra/main.bicep"])) {
		problems = append(problems, "infra/main.bicep: the function app module's identityClientId is not identity.outputs.clientId")
	}
	return problems
}

func TestDriftLockAndIdentity(t *testing.T) {
	r := driftLoadRepo(t)
	driftReport(t, driftCheckLockAndIdentity(r.bicep))
}

func TestDriftLockAndIdentityCatchBreakage(t *testing.T) {
	r := driftLoadRepo(t)
	if p := driftCheckLockAndIdentity(r.bicep); len(p) != 0 {
		t.Skipf("the real files already drift (TestDriftLockAndIdentity reports it): %v", p)
	}
	short := driftMustReplace(t, r.bicep, "lockDuration: 'PT5M'", "lockDuration: 'PT5S'")
	driftExpectProblem(t, "a 5 s lock", driftCheckLockAndIdentity(short), "lockDuration 'PT5S'")
	long := driftMustReplace(t, r.bicep, "lockDuration: 'PT5M'", "lockDuration: 'PT10M'")
	driftExpectProblem(t, "a 10 min lock", driftCheckLockAndIdentity(long), "lockDuration 'PT10M'")
	resID := driftMustReplace(t, r.bicep, "ServiceBusConnection__clientId: identityClientId", "ServiceBusConnection__clientId: identityId")
	driftExpectProblem(t, "the identity's resource id as client id", driftCheckLockAndIdentity(resID), "ServiceBusConnection__clientId is identityId")
	wired := driftMustReplace(t, r.bicep, "identityClientId: identity.outputs.clientId", "identityClientId: identity.outputs.principalId")
	driftExpectProblem(t, "the principal id passed as client id", driftCheckLockAndIdentity(wired), "identity.outputs.clientId")
}
