package dataverse

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"
)

type seen struct {
	Method, Path, RawQuery string
	Header                 http.Header
	Body                   map[string]any
}

func readSeen(r *http.Request) seen {
	s := seen{Method: r.Method, Path: strings.TrimPrefix(r.URL.Path, APIPath), RawQuery: r.URL.RawQuery, Header: r.Header.Clone()}
	b, _ := io.ReadAll(r.Body)
	if len(b) > 0 {
		_ = json.Unmarshal(b, &s.Body)
	}
	return s
}

// rowServer is a tiny in-memory set of contacts honouring the upsert
// preconditions, enough to check the client's requests and answers.
func rowServer(t *testing.T) (*fakeEnv, *[]seen, *sync.Mutex) {
	var mu sync.Mutex
	var log []seen
	rows := map[string]map[string]any{}
	f := newFakeEnv(t, func(w http.ResponseWriter, r *http.Request) {
		s := readSeen(r)
		mu.Lock()
		log = append(log, s)
		defer mu.Unlock()
		id := EntityIDFromURL(s.Path)
		_, exists := rows[id]
		switch {
		case s.Method == http.MethodPatch:
			if r.Header.Get("If-None-Match") == "*" && exists {
				dvError(w, 412, "0x80060892", "A record with matching key values already exists.")
				return
			}
			if r.Header.Get("If-Match") == "*" && !exists {
				dvError(w, 404, "0x80040217", "contact With Id = "+id+" Does Not Exist")
				return
			}
			if !exists {
				rows[id] = map[string]any{"contactid": id}
			}
			for k, v := range s.Body {
				rows[id][k] = v
			}
			w.Header().Set("OData-EntityId", "https://x"+APIPath+"contacts("+id+")")
			if r.Header.Get("Prefer") == "return=representation" {
				st := 200
				if !exists {
					st = 201
				}
				writeJSON(w, st, rows[id])
				return
			}
			w.WriteHeader(204)
		case s.Method == http.MethodPost && s.Path == "contacts":
			nid := uuid.NewString()
			rows[nid] = s.Body
			w.Header().Set("OData-EntityId", "https://x"+APIPath+"contacts("+nid+")")
			w.WriteHeader(204)
		case s.Method == http.MethodDelete:
			if !exists {
				dvError(w, 404, "0x80040217", "Does Not Exist")
				return
			}
			delete(rows, id)
			w.WriteHeader(204)
		case s.Method == http.MethodGet && id != "":
			if !exists {
				dvError(w, 404, "0x80040217", "Does Not Exist")
				return
			}
			writeJSON(w, 200, rows[id])
		default:
			dvError(w, 400, "0x0", "unexpected "+s.Method+" "+s.Path)
		}
	})
	return f, &log, &mu
}

func TestUpsertModesAndErrors(t *testing.T) {
	f, log, mu := rowServer(t)
	c, _ := f.newClient(t, nil)
	ctx := context.Background()
	id := uuid.NewString()

	if _, err := c.Upsert(ctx, "contacts", id, Record{"lastname": "A"}, UpdateOnly); !IsNotFound(err) {
		t.Fatalf("update-only of a missing row: err = %v, want not found", err)
	}
	created, err := c.Upsert(ctx, "contacts", id, Record{"lastname": "A"}, CreateOnly)
	if err != nil || !created {
		t.Fatalf("create-only: created=%v err=%v", created, err)
	}
	created, err = c.Upsert(ctx, "contacts", id, Record{"lastname": "B"}, CreateOnly)
	var de *Error
	if !IsConflict(err) || created || !errors.As(err, &de) || de.Code != "0x80060892" || de.Retryable || IsRetryable(err) {
		t.Fatalf("create-only of an existing row: created=%v err=%#v", created, err)
	}
	if !strings.Contains(err.Error(), "PATCH contacts("+id+")") || !strings.Contains(err.Error(), "matching key values") {
		t.Fatalf("error text %q lacks op or message", err)
	}
	if created, err = c.Upsert(ctx, "contacts", id, Record{"lastname": "C"}, Upsert); err != nil || created {
		t.Fatalf("upsert of existing: created=%v err=%v", created, err)
	}
	if err := c.Update(ctx, "contacts", id, Record{"firstname": "D"}); err != nil {
		t.Fatal(err)
	}
	rec, err := c.Retrieve(ctx, "contacts", id, "lastname", "firstname")
	if err != nil || rec["lastname"] != "C" || rec["firstname"] != "D" {
		t.Fatalf("retrieve = %v, %v", rec, err)
	}
	if err := c.Delete(ctx, "contacts", id); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, "contacts", id); !IsNotFound(err) {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := c.Retrieve(ctx, "contacts", id); !IsNotFound(err) {
		t.Fatalf("retrieve deleted: %v", err)
	}
	nid, err := c.Create(ctx, "contacts", Record{"lastname": "E"})
	if err != nil || uuid.Validate(nid) != nil {
		t.Fatalf("create: id=%q err=%v", nid, err)
	}

	mu.Lock()
	defer mu.Unlock()
	want := []struct{ method, path, ifMatch, ifNone string }{
		{"PATCH", "contacts(" + id + ")", "*", ""},
		{"PATCH", "contacts(" + id + ")", "", "*"},
		{"PATCH", "contacts(" + id + ")", "", "*"},
		{"PATCH", "contacts(" + id + ")", "", ""},
		{"PATCH", "contacts(" + id + ")", "*", ""},
		{"GET", "contacts(" + id + ")", "", ""},
	}
	for i, w := range want {
		s := (*log)[i]
		if s.Method != w.method || s.Path != w.path || s.Header.Get("If-Match") != w.ifMatch || s.Header.Get("If-None-Match") != w.ifNone {
			t.Errorf("request %d = %s %s If-Match=%q If-None-Match=%q, want %+v", i, s.Method, s.Path,
				s.Header.Get("If-Match"), s.Header.Get("If-None-Match"), w)
		}
		if w.method == "PATCH" && s.Header.Get("Content-Type") != "application/json" {
			t.Errorf("request %d Content-Type = %q", i, s.Header.Get("Content-Type"))
		}
	}
	if q, _ := url.ParseQuery((*log)[5].RawQuery); q.Get("$select") != "lastname,firstname" {
		t.Errorf("retrieve query = %q", (*log)[5].RawQuery)
	}
}

func TestKeysAndBind(t *testing.T) {
	if got := Bind("contacts", "0f8fad5b-d9cb-469f-a165-70867728950e"); got != "/contacts(0f8fad5b-d9cb-469f-a165-70867728950e)" {
		t.Fatal(got)
	}
	k := AlternateKey("nop_name", "O'Brien & Co/1 #2")
	if k != "nop_name='O''Brien & Co/1 #2'" {
		t.Fatal(k)
	}
	p := EntityPath("contacts", k)
	if p != "contacts(nop_name='O''Brien%20&%20Co%2F1%20%232')" {
		t.Fatal(p)
	}
	u, err := url.Parse("https://h" + APIPath + p)
	if err != nil || u.Path != APIPath+"contacts("+k+")" {
		t.Fatalf("path does not round-trip: %v %q", err, u.Path)
	}
	for in, want := range map[string]string{
		"https://org.crm.dynamics.com/api/data/v9.2/contacts(0f8fad5b-d9cb-469f-a165-70867728950e)": "0f8fad5b-d9cb-469f-a165-70867728950e",
		"https://x/api/data/v9.2/contacts(nop_customerid='42')":                                     "nop_customerid='42'",
		"": "",
	} {
		if got := EntityIDFromURL(in); got != want {
			t.Errorf("EntityIDFromURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestQueryFollowsNextLinkAndStopsAtTop(t *testing.T) {
	var mu sync.Mutex
	var reqs []seen
	var base string
	f := newFakeEnv(t, func(w http.ResponseWriter, r *http.Request) {
		s := readSeen(r)
		mu.Lock()
		reqs = append(reqs, s)
		mu.Unlock()
		page := r.URL.Query().Get("page")
		switch page {
		case "":
			writeJSON(w, 200, map[string]any{"value": []any{map[string]any{"n": 1}, map[string]any{"n": 2}},
				"@odata.nextLink": base + APIPath + "contacts?$select=n&page=2"})
		case "2":
			writeJSON(w, 200, map[string]any{"value": []any{map[string]any{"n": 3}},
				"@odata.nextLink": base + APIPath + "contacts?$select=n&page=3"})
		default:
			writeJSON(w, 200, map[string]any{"value": []any{map[string]any{"n": 4}}})
		}
	})
	base = f.srv.URL
	c, logs := f.newClient(t, nil)
	var got []float64
	err := c.Query(context.Background(), "contacts", Query{Select: []string{"n", "lastname"}, Filter: "emailaddress1 eq 'a&b@x.org'", PageSize: 2},
		func(r Record) error { got = append(got, r["n"].(float64)); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, []float64{1, 2, 3, 4}) {
		t.Fatalf("rows = %v", got)
	}
	if l := logs.all(); strings.Contains(l, "a&b@x.org") || strings.Contains(l, "a%26b") || !strings.Contains(l, "GET /api/data/v9.2/contacts?… 200") {
		t.Fatalf("query values in logs or no log line: %s", l)
	}
	q, _ := url.ParseQuery(reqs[0].RawQuery)
	if q.Get("$select") != "n,lastname" || q.Get("$filter") != "emailaddress1 eq 'a&b@x.org'" {
		t.Fatalf("first query = %q", reqs[0].RawQuery)
	}
	for i, r := range reqs {
		if r.Header.Get("Prefer") != "odata.maxpagesize=2" {
			t.Errorf("request %d Prefer = %q", i, r.Header.Get("Prefer"))
		}
	}
	// Top stops early; an error from fn is returned
	got = nil
	reqs = nil
	if err := c.Query(context.Background(), "contacts", Query{Top: 3}, func(r Record) error { got = append(got, r["n"].(float64)); return nil }); err != nil || len(got) != 3 || len(reqs) != 2 {
		t.Fatalf("top 3: rows %v requests %d err %v", got, len(reqs), err)
	}
	stop := errors.New("stop")
	if err := c.Query(context.Background(), "contacts", Query{}, func(Record) error { return stop }); err != stop {
		t.Fatalf("fn error = %v", err)
	}
}

func TestQueryRefusesForeignNextLink(t *testing.T) {
	f := newFakeEnv(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{"value": []any{}, "@odata.nextLink": "https://evil.example" + APIPath + "contacts?page=2"})
	})
	c, _ := f.newClient(t, nil)
	err := c.Query(context.Background(), "contacts", Query{}, func(Record) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "outside the environment") {
		t.Fatalf("err = %v", err)
	}
}

func TestActionsSendDocumentedPayloads(t *testing.T) {
	var mu sync.Mutex
	var reqs []seen
	invoice := uuid.NewString()
	f := newFakeEnv(t, func(w http.ResponseWriter, r *http.Request) {
		s := readSeen(r)
		mu.Lock()
		reqs = append(reqs, s)
		mu.Unlock()
		if s.Path == "ConvertSalesOrderToInvoice" {
			writeJSON(w, 200, map[string]any{"@odata.context": "x", "invoiceid": invoice, "name": "Invoice"})
			return
		}
		w.WriteHeader(204)
	})
	c, _ := f.newClient(t, nil)
	ctx := context.Background()
	order, product := uuid.NewString(), uuid.NewString()
	if err := c.FulfillSalesOrder(ctx, order, 100001); err != nil {
		t.Fatal(err)
	}
	if err := c.CancelSalesOrder(ctx, order, 4); err != nil {
		t.Fatal(err)
	}
	inv, err := c.ConvertSalesOrderToInvoice(ctx, order)
	if err != nil || inv != invoice {
		t.Fatalf("invoice = %q, %v", inv, err)
	}
	if err := c.PublishProductHierarchy(ctx, product); err != nil {
		t.Fatal(err)
	}
	wantClose := map[string]any{"@odata.type": "Microsoft.Dynamics.CRM.orderclose", "salesorderid@odata.bind": "/salesorders(" + order + ")"}
	for i, name := range []string{"FulfillSalesOrder", "CancelSalesOrder"} {
		r := reqs[i]
		oc, _ := r.Body["OrderClose"].(map[string]any)
		if r.Method != "POST" || r.Path != name || oc == nil || oc["@odata.type"] != wantClose["@odata.type"] ||
			oc["salesorderid@odata.bind"] != wantClose["salesorderid@odata.bind"] {
			t.Errorf("%s request = %s %s %v", name, r.Method, r.Path, r.Body)
		}
	}
	if reqs[0].Body["Status"] != float64(100001) || reqs[1].Body["Status"] != float64(4) {
		t.Errorf("statuses = %v, %v", reqs[0].Body["Status"], reqs[1].Body["Status"])
	}
	if b := reqs[2].Body; reqs[2].Path != "ConvertSalesOrderToInvoice" || b["SalesOrderId"] != order ||
		!reflect.DeepEqual(b["ColumnSet"], map[string]any{"AllColumns": false, "Columns": []any{"invoiceid"}}) {
		t.Errorf("convert request = %s %v", reqs[2].Path, b)
	}
	if reqs[3].Method != "POST" || reqs[3].Path != "products("+product+")/Microsoft.Dynamics.CRM.PublishProductHierarchy" {
		t.Errorf("publish request = %s %s", reqs[3].Method, reqs[3].Path)
	}
}
