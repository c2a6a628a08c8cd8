package dataversetest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/google/uuid"
)

// v2-oauth2-client-creds-grant-flow: a real azidentity ClientSecretCredential gets a token through the
// simulator's discovery document and token endpoint, and the token opens the Web API.
func TestAuth_AzidentityClientSecretCredential(t *testing.T) {
	c := newTC(t, Options{})
	r := c.must(200, c.do("GET", "WhoAmI", nil))
	if r.body["UserId"] != c.s.UserID() || r.body["OrganizationId"] != c.s.OrganizationID() || r.body["BusinessUnitId"] != c.s.BusinessUnitID() {
		t.Fatalf("WhoAmI = %v", r.body)
	}
	if got := r.header.Get("OData-Version"); got != "4.0" {
		t.Fatalf("OData-Version = %q", got)
	}
	// POST WhoAmI is 404 (WhoAmI is a function, so GET only).
	c.must(404, c.do("POST", "WhoAmI", nil))
}

// Learn: webapi/authenticate-web-api: 401 for missing, unknown and expired tokens, with WWW-Authenticate.
func TestAuth_401(t *testing.T) {
	c := newTC(t, Options{TokenLifetime: 1500 * time.Millisecond})
	good := c.token
	c.token = ""
	r := c.must(401, c.do("GET", "contacts", nil))
	if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer authorization_uri=") {
		t.Fatalf("WWW-Authenticate = %q", r.header.Get("WWW-Authenticate"))
	}
	if r.body["error"] == nil {
		t.Fatalf("401 without error body: %s", r.raw)
	}
	c.token = "dvsim.bogus"
	c.must(401, c.do("GET", "contacts", nil))
	c.token = good
	c.must(200, c.do("GET", "contacts", nil))
	time.Sleep(1600 * time.Millisecond)
	r = c.must(401, c.do("GET", "contacts", nil))
	if !strings.Contains(r.errMsg(), "Expired") {
		t.Fatalf("expired token message = %q", r.errMsg())
	}
}

// Client secret rotation: the old secret fails with AADSTS7000215 invalid_client.
func TestAuth_SecretRotation(t *testing.T) {
	c := newTC(t, Options{})
	old := c.s.ClientSecret()
	c.s.SetClientSecret("sim-rotated-" + uuid.NewString())
	_, err := credential(t, c.s, old).GetToken(context.Background(), policy.TokenRequestOptions{Scopes: []string{c.s.URL() + "/.default"}})
	var afe *azidentity.AuthenticationFailedError
	if !errors.As(err, &afe) || !strings.Contains(err.Error(), "AADSTS7000215") || afe.RawResponse.StatusCode != http.StatusUnauthorized {
		t.Fatalf("old secret: err = %v", err)
	}
	if _, err := credential(t, c.s, c.s.ClientSecret()).GetToken(context.Background(), policy.TokenRequestOptions{Scopes: []string{c.s.URL() + "/.default"}}); err != nil {
		t.Fatalf("new secret: %v", err)
	}
	// v2-oauth2-client-creds-grant-flow: a scope that isn't <env>/.default is invalid_scope.
	_, err = credential(t, c.s, c.s.ClientSecret()).GetToken(context.Background(), policy.TokenRequestOptions{Scopes: []string{"https://example.crm.dynamics.com/.default"}})
	if err == nil || !strings.Contains(err.Error(), "AADSTS70011") {
		t.Fatalf("bad scope: err = %v", err)
	}
}

// web-api-client-errors: case-sensitive sets, columns and navigation properties.
func TestRouting_CaseSensitive(t *testing.T) {
	c := newTC(t, Options{})
	r := c.must(404, c.do("GET", "Contacts", nil))
	if r.errCode() != "0x8006088a" || r.errMsg() != "Resource not found for the segment 'Contacts'." {
		t.Fatalf("unknown set: %s", r.raw)
	}
	r = c.must(400, c.do("GET", "accounts?$select=Name", nil))
	if r.errMsg() != "Could not find a property named 'Name' on type 'Microsoft.Dynamics.CRM.account'." {
		t.Fatalf("bad $select: %s", r.raw)
	}
	r = c.must(400, c.do("POST", "accounts", map[string]any{"Name": "x"}))
	if !strings.Contains(r.errMsg(), "Invalid property 'Name' was found in entity 'Microsoft.Dynamics.CRM.account'") {
		t.Fatalf("bad column: %s", r.raw)
	}
	r = c.must(400, c.do("POST", "contacts", map[string]any{"lastname": "x", "parentcustomerid@odata.bind": "/accounts(" + uuid.NewString() + ")"}))
	if r.errCode() != "0x80048d19" || !strings.Contains(r.errMsg(), "An undeclared property 'parentcustomerid'") {
		t.Fatalf("bad nav: %s", r.raw)
	}
	// Read-only columns are ignored silently (Learn: entity-attribute-metadata).
	id := entityID(c.must(204, c.do("POST", "contacts", map[string]any{"firstname": "A", "lastname": "B", "fullname": "ignored"})))
	row, _ := c.s.Row("contacts", id)
	if row["fullname"] != "A B" {
		t.Fatalf("fullname = %v", row["fullname"])
	}
}

// PATCH upsert by primary key, If-Match/If-None-Match, representation (Learn:
// use-upsert-insert-update-record, webapi/perform-conditional-operations-using-web-api).
func TestUpsert(t *testing.T) {
	c := newTC(t, Options{})
	id := uuid.NewString()
	// If-Match: * on a missing row → 404 0x80040217.
	r := c.must(404, c.do("PATCH", "contacts("+id+")", map[string]any{"lastname": "X"}, "If-Match", "*"))
	if r.errCode() != "0x80040217" || r.errMsg() != "contact With Id = "+id+" Does Not Exist" {
		t.Fatalf("if-match: %s", r.raw)
	}
	if c.s.Count("contacts") != 0 {
		t.Fatal("If-Match:* created a row")
	}
	r = c.must(204, c.do("PATCH", "contacts("+id+")", map[string]any{"lastname": "X"}))
	if r.header.Get("OData-EntityId") != c.s.URL()+"/api/data/v9.2/contacts("+id+")" {
		t.Fatalf("OData-EntityId = %q", r.header.Get("OData-EntityId"))
	}
	r = c.must(200, c.do("PATCH", "contacts("+id+")?$select=lastname", map[string]any{"lastname": "Y"}, "Prefer", "return=representation"))
	if r.body["lastname"] != "Y" || r.body["contactid"] != id || r.header.Get("ETag") == "" || r.body["@odata.etag"] != r.header.Get("ETag") {
		t.Fatalf("representation: %s %v", r.raw, r.header)
	}
	id2 := uuid.NewString()
	r = c.must(201, c.do("PATCH", "contacts("+id2+")", map[string]any{"lastname": "Z"}, "Prefer", "return=representation"))
	r = c.must(412, c.do("PATCH", "contacts("+id2+")", map[string]any{"lastname": "Z"}, "If-None-Match", "*"))
	if r.errMsg() != "A record with matching key values already exists." {
		t.Fatalf("if-none-match: %s", r.raw)
	}
	// POST honours a client-supplied primary key; a second POST with it is 412.
	id3 := uuid.NewString()
	r = c.must(204, c.do("POST", "contacts", map[string]any{"contactid": id3, "lastname": "P"}))
	if entityID(r) != id3 {
		t.Fatalf("POST id = %s", entityID(r))
	}
	c.must(412, c.do("POST", "contacts", map[string]any{"contactid": id3, "lastname": "P"}))
	r = c.must(201, c.do("POST", "contacts", map[string]any{"lastname": "Q"}, "Prefer", "return=representation"))
	if r.header.Get("OData-EntityId") != "" || r.body["contactid"] == nil {
		t.Fatalf("POST representation: %v %s", r.header, r.raw)
	}
}

// Learn: webapi/perform-conditional-operations-using-web-api: ETags change on every write; If-Match mismatch 412; If-None-Match 304.
func TestETags(t *testing.T) {
	c := newTC(t, Options{})
	id := entityID(c.must(204, c.do("POST", "contacts", map[string]any{"lastname": "E"})))
	r := c.must(200, c.do("GET", "contacts("+id+")?$select=lastname", nil))
	e1 := r.body["@odata.etag"].(string)
	c.must(304, c.do("GET", "contacts("+id+")?$select=lastname", nil, "If-None-Match", e1))
	c.must(204, c.do("PATCH", "contacts("+id+")", map[string]any{"lastname": "F"}, "If-Match", e1))
	r = c.must(412, c.do("PATCH", "contacts("+id+")", map[string]any{"lastname": "G"}, "If-Match", e1))
	if r.errCode() != "0x80060882" {
		t.Fatalf("etag mismatch: %s", r.raw)
	}
	r = c.must(200, c.do("GET", "contacts("+id+")", nil))
	if r.body["@odata.etag"] == e1 || r.body["lastname"] != "F" {
		t.Fatalf("etag did not change: %s", r.raw)
	}
	c.must(412, c.do("DELETE", "contacts("+id+")", nil, "If-Match", e1))
	c.must(204, c.do("DELETE", "contacts("+id+")", nil))
	c.must(404, c.do("DELETE", "contacts("+id+")", nil))
}

// Learn: webapi/associate-disassociate-entities-using-web-api: @odata.bind, polymorphic customer lookups, null clears, 404 targets.
func TestBind(t *testing.T) {
	c := newTC(t, Options{})
	acc := entityID(c.must(204, c.do("POST", "accounts", map[string]any{"name": "Contoso"})))
	con := entityID(c.must(204, c.do("POST", "contacts", map[string]any{"lastname": "L", "parentcustomerid_account@odata.bind": "/accounts(" + acc + ")"})))
	row, _ := c.s.Row("contacts", con)
	if row["_parentcustomerid_value"] != acc {
		t.Fatalf("bind: %v", row)
	}
	r := c.must(200, c.do("GET", "contacts("+con+")?$select=_parentcustomerid_value", nil, "Prefer", `odata.include-annotations="*"`))
	if r.body["_parentcustomerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] != "account" {
		t.Fatalf("annotation: %s", r.raw)
	}
	// Binding the other variant replaces it (shared _parentcustomerid_value).
	other := entityID(c.must(204, c.do("POST", "contacts", map[string]any{"lastname": "M"})))
	c.must(204, c.do("PATCH", "contacts("+con+")", map[string]any{"parentcustomerid_contact@odata.bind": "contacts(" + other + ")"}, "If-Match", "*"))
	row, _ = c.s.Row("contacts", con)
	if row["_parentcustomerid_value"] != other {
		t.Fatalf("polymorphic rebind: %v", row)
	}
	c.must(204, c.do("PATCH", "contacts("+con+")", map[string]any{"parentcustomerid_contact@odata.bind": nil}, "If-Match", "*"))
	row, _ = c.s.Row("contacts", con)
	if _, ok := row["_parentcustomerid_value"]; ok {
		t.Fatalf("null did not clear: %v", row)
	}
	missing := uuid.NewString()
	r = c.must(404, c.do("PATCH", "contacts("+con+")", map[string]any{"parentcustomerid_account@odata.bind": "/accounts(" + missing + ")"}, "If-Match", "*"))
	if r.errMsg() != "account With Id = "+missing+" Does Not Exist" {
		t.Fatalf("missing target: %s", r.raw)
	}
	// Wrong target set for the navigation property.
	c.must(400, c.do("PATCH", "contacts("+con+")", map[string]any{"parentcustomerid_account@odata.bind": "/contacts(" + other + ")"}, "If-Match", "*"))
	// DELETE .../$ref clears a lookup.
	c.must(204, c.do("PATCH", "contacts("+con+")", map[string]any{"parentcustomerid_account@odata.bind": "/accounts(" + acc + ")"}, "If-Match", "*"))
	c.must(204, c.do("DELETE", "contacts("+con+")/parentcustomerid_account/$ref", nil))
	row, _ = c.s.Row("contacts", con)
	if _, ok := row["_parentcustomerid_value"]; ok {
		t.Fatalf("$ref delete did not clear: %v", row)
	}
}

// Learn: use-alternate-key-reference-record: alternate keys when declared; key columns copied on create, dropped on update.
func TestAlternateKeys(t *testing.T) {
	c := newTC(t, Options{AlternateKeys: map[string][][]string{"accounts": {{"accountnumber"}}}})
	r := c.must(204, c.do("PATCH", "accounts(accountnumber='A''1')", map[string]any{"name": "One"}))
	if r.header.Get("OData-EntityId") != c.s.URL()+"/api/data/v9.2/accounts(accountnumber='A''1')" {
		t.Fatalf("OData-EntityId = %q", r.header.Get("OData-EntityId"))
	}
	rows := c.s.Rows("accounts")
	if len(rows) != 1 || rows[0]["accountnumber"] != "A'1" {
		t.Fatalf("rows = %v", rows)
	}
	c.must(204, c.do("PATCH", "accounts(accountnumber='A''1')", map[string]any{"name": "Two", "accountnumber": "changed"}))
	rows = c.s.Rows("accounts")
	if len(rows) != 1 || rows[0]["accountnumber"] != "A'1" || rows[0]["name"] != "Two" {
		t.Fatalf("rows = %v", rows)
	}
	r = c.must(404, c.do("PATCH", "accounts(accountnumber='nope')", map[string]any{"name": "x"}, "If-Match", "*"))
	if r.errCode() != "0x80060891" {
		t.Fatalf("alt key missing: %s", r.raw)
	}
	r = c.must(400, c.do("GET", "accounts(name='x')", nil))
	if !strings.Contains(r.errMsg(), "The key in the request URI is not valid for resource 'Microsoft.Dynamics.CRM.account'") {
		t.Fatalf("undeclared key: %s", r.raw)
	}
	r = c.must(412, c.do("POST", "accounts", map[string]any{"name": "dup", "accountnumber": "a'1"}))
	if r.errCode() != "0x80060892" {
		t.Fatalf("duplicate key: %s", r.raw)
	}
	c.must(200, c.do("GET", "accounts(accountnumber='A''1')", nil))
	// Learn: use-alternate-key-reference-record: plus-addressing and friends break keys.
	c.must(400, c.do("PATCH", "accounts(accountnumber='a%2Bb')", map[string]any{"name": "x"}))
}

// Learn: webapi/query/filter-rows, webapi/compose-http-requests-handle-errors: $select, $filter, $top, paging with nextLink and odata.maxpagesize.
func TestQuery(t *testing.T) {
	c := newTC(t, Options{})
	acc := entityID(c.must(204, c.do("POST", "accounts", map[string]any{"name": "Fabrikam"})))
	for i := 0; i < 7; i++ {
		body := map[string]any{"lastname": "N", "emailaddress1": "Person" + string(rune('a'+i)) + "@Example.com"}
		if i%2 == 0 {
			body["parentcustomerid_account@odata.bind"] = "/accounts(" + acc + ")"
		}
		c.must(204, c.do("POST", "contacts", body))
	}
	// String comparison is case-insensitive like Dataverse's SQL collation.
	r := c.must(200, c.do("GET", "contacts?$select=emailaddress1&$filter=emailaddress1 eq 'PERSONA@example.COM' and statecode eq 0", nil))
	if v := r.body["value"].([]any); len(v) != 1 {
		t.Fatalf("filter eq: %s", r.raw)
	}
	r = c.must(200, c.do("GET", "contacts?$filter=_parentcustomerid_value eq "+acc+"&$select=contactid", nil))
	if v := r.body["value"].([]any); len(v) != 4 {
		t.Fatalf("lookup filter: %d", len(v))
	}
	r = c.must(200, c.do("GET", "contacts?$filter=_parentcustomerid_value ne "+acc+"&$top=2", nil))
	if v := r.body["value"].([]any); len(v) != 2 {
		t.Fatalf("ne + top: %d", len(v))
	}
	r = c.must(400, c.do("GET", "contacts?$filter=tolower(emailaddress1) eq 'x'", nil))
	c2 := newTC(t, Options{AllowStringCaseFunctions: true})
	c2.must(200, c2.do("GET", "contacts?$filter=tolower(emailaddress1) eq 'x'", nil))
	// Paging.
	var seen int
	next := "contacts?$select=contactid"
	pages := 0
	for next != "" {
		r = c.must(200, c.do("GET", next, nil, "Prefer", "odata.maxpagesize=3"))
		seen += len(r.body["value"].([]any))
		next, _ = r.body["@odata.nextLink"].(string)
		pages++
	}
	if seen != 7 || pages != 3 {
		t.Fatalf("paging: seen %d in %d pages", seen, pages)
	}
	// Type-checked comparisons: a quoted GUID is an Edm.String.
	r = c.must(400, c.do("GET", "contacts?$filter=_parentcustomerid_value eq '"+acc+"'", nil))
	if !strings.Contains(r.errMsg(), "Found operand types 'Edm.Guid' and 'Edm.String'") {
		t.Fatalf("quoted guid: %s", r.raw)
	}
	c.must(400, c.do("GET", "contacts?$filter=statecode eq '0'", nil))
	r = c.must(200, c.do("GET", "contacts?$filter=createdon gt 2000-01-01T00:00:00Z and createdon lt 2999-01-01", nil))
	if v := r.body["value"].([]any); len(v) != 7 {
		t.Fatalf("date filter: %d", len(v))
	}
	r = c.must(400, c.do("GET", "contacts?$skip=2", nil))
	if r.errMsg() != "The query parameter $skip is not supported." {
		t.Fatalf("$skip: %s", r.raw)
	}
	r = c.must(400, c.do("GET", "contacts?$filter=EmailAddress1 eq 'x'", nil))
	if !strings.Contains(r.errMsg(), "Could not find a property named 'EmailAddress1'") {
		t.Fatalf("filter property: %s", r.raw)
	}
}

// Insert/Update/Delete apply the same rules without HTTP.
func TestDirectAccess(t *testing.T) {
	s := NewServer(Options{})
	defer s.Close()
	id, err := s.Insert("contacts", map[string]any{"firstname": "Ada", "lastname": "Admin", "emailaddress1": "ada@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Update("contacts", id, map[string]any{"telephone1": "1"}); err != nil {
		t.Fatal(err)
	}
	if r, _ := s.Row("contacts", id); r["fullname"] != "Ada Admin" || r["telephone1"] != "1" {
		t.Fatalf("row %v", r)
	}
	if _, err := s.Insert("contacts", map[string]any{"Bogus": 1}); err == nil || !strings.Contains(err.Error(), "Invalid property") {
		t.Fatalf("bad insert: %v", err)
	}
	if err := s.Update("contacts", uuid.NewString(), map[string]any{"lastname": "x"}); err == nil {
		t.Fatal("update of a missing row succeeded")
	}
	if err := s.Delete("contacts", id); err != nil || s.Count("contacts") != 0 {
		t.Fatalf("delete: %v", err)
	}
}

// Equality look-ups ("col eq 'a' or col eq 'b' ...", possibly and-ed with more) are
// answered from the keys the filter names instead of evaluating it on every row; that
// must never drop a row the filter matches, and must narrow the rows for the shapes the
// app sends.
func TestQueryKeysNeverDropAMatch(t *testing.T) {
	s := NewServer(Options{})
	defer s.Close()
	emails := []string{"Ann@Example.com", "bob@example.com", "CARL@example.com", "dörte@example.com", "K\u212aim@example.com", ""}
	var ids []string
	for i, m := range emails {
		row := map[string]any{"lastname": fmt.Sprint("N", i)}
		if m != "" {
			row["emailaddress1"] = m
		}
		id, err := s.Insert("contacts", row)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	cases := []struct {
		filter string
		narrow bool // the filter names keys
		want   int
	}{
		{"emailaddress1 eq 'ann@example.com' or emailaddress1 eq 'BOB@EXAMPLE.COM'", true, 2},
		{"statecode eq 0 and (emailaddress1 eq 'carl@example.com' or emailaddress1 eq 'nobody@example.com')", true, 1},
		{"'ann@example.com' eq emailaddress1", true, 1},
		{"emailaddress1 eq 'DÖRTE@example.com'", false, 1},                                     // non-ASCII literal: full scan, EqualFold decides
		{"emailaddress1 eq 'kkim@example.com' or emailaddress1 eq 'ann@example.com'", true, 2}, // the Kelvin sign folds to k
		{"emailaddress1 eq 'ann@example.com' or lastname eq 'N1'", false, 2},
		{"not (emailaddress1 eq 'ann@example.com')", false, 5},
		{"contactid eq " + ids[1] + " or contactid eq " + ids[2], true, 2},
		{"emailaddress1 eq null", false, 1},
		{"contains(emailaddress1, 'example') and lastname eq 'N0'", true, 1},
	}
	for _, c := range cases {
		p := &filterParser{s: s, t: s.sc.byLogical["contact"]}
		if err := p.tokenize(c.filter); err != nil {
			t.Fatalf("%s: %v", c.filter, err)
		}
		e, err := p.parseExpr()
		if err != nil {
			t.Fatalf("%s: %v", c.filter, err)
		}
		if (p.keys != nil) != c.narrow {
			t.Errorf("%s: keys %v, want narrowing %v", c.filter, p.keys, c.narrow)
		}
		matched := 0
		for _, r := range s.st.rows["contact"] {
			if v, _ := e(r).(bool); v {
				matched++
				if p.keys != nil && !p.keys.mayMatch(r) {
					t.Errorf("%s: keys drop the matching row %v", c.filter, r.vals["emailaddress1"])
				}
			}
		}
		if matched != c.want {
			t.Errorf("%s: %d rows match, want %d", c.filter, matched, c.want)
		}
	}
}

// A GET longer than 32 KB is refused, a shorter one answered.
func TestURLLengthLimit(t *testing.T) {
	c := newTC(t, Options{})
	filter := func(n int) string {
		conds := make([]string, n)
		for i := range conds {
			conds[i] = fmt.Sprintf("emailaddress1 eq 'someone.%05d@example.com'", i)
		}
		return "contacts?$select=contactid&$filter=" + strings.Join(conds, " or ")
	}
	c.must(200, c.do("GET", filter(400), nil))
	c.must(414, c.do("GET", filter(1000), nil))
}
