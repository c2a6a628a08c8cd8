package dataversetest

import (
	"net/http"
	"regexp"
	"strings"

	"github.com/google/uuid"
)

// Codes of the bulk answers (the others are in errors.go).
const (
	// codeNoMessageProcessor: "The '<Message>' method does not support entities of type
	// '<table>'. MessageProcessorCache returned MessageProcessor.Empty." — the answer
	// Dataverse gives for a message a table has no processor for (reported for Create on
	// organization in microsoft/coe-starter-kit#9332, code 0x80040800).
	codeNoMessageProcessor = "0x80040800"
	// codeSQLTimeout: "SQL timeout expired." (-2147204783), "likely to occur if the batch
	// size of your request is too large" (learn.microsoft.com/troubleshoot/power-platform/
	// power-apps/dataverse/bulk-operation-errors).
	codeSQLTimeout = "0x80044151"
)

// bulkTablesWithout are the tables whose reference pages list none of CreateMultiple,
// UpdateMultiple, UpsertMultiple (learn.microsoft.com/power-apps/developer/data-platform/
// reference/entities/productpricelevel), beside those in Options.BulkUnsupported.
var bulkTablesWithout = map[string]bool{"productpricelevels": true}

func (s *Server) bulkSupported(t *table) bool {
	if bulkTablesWithout[t.set] {
		return false
	}
	for _, set := range s.o.BulkUnsupported {
		if set == t.set {
			return false
		}
	}
	return true
}

var (
	filterMessageRe = regexp.MustCompile(`sdkmessageid/name eq '([A-Za-z]+)'`)
	filterTableRe   = regexp.MustCompile(`primaryobjecttypecode eq '([a-z0-9_]+)'`)
)

// sdkMessageFilters serves the read Microsoft gives for "test whether individual
// standard tables support these messages": GET sdkmessagefilters?$filter=sdkmessageid/name
// eq 'CreateMultiple' and primaryobjecttypecode eq '<table>'
// (learn.microsoft.com/power-apps/developer/data-platform/bulk-operations#availability-with-standard-tables).
// Only that shape of filter is understood (and the *Multiple messages); one row per
// table that has the message. Options.NoMessageFilters answers 403 instead, as for a
// security role without read access to the table.
func (s *Server) sdkMessageFilters(q *apiReq) (*apiResp, *apiError) {
	if q.method != http.MethodGet {
		return nil, errf(http.StatusMethodNotAllowed, codeZero, "The HTTP method '%s' is not allowed on the entity set 'sdkmessagefilters'.", q.method)
	}
	if s.o.NoMessageFilters {
		return nil, errf(http.StatusForbidden, "0x80040220",
			"Principal user (Id=%s, type=8) is missing prvReadSdkMessageProcessingStep privilege on entity 'sdkmessagefilter'.", s.userID)
	}
	f := q.query.Get("$filter")
	m := filterMessageRe.FindStringSubmatch(f)
	if m == nil {
		return nil, errf(http.StatusBadRequest, codeZero, "The simulator answers sdkmessagefilters only for $filter=sdkmessageid/name eq '<message>' [and primaryobjecttypecode eq '<table>'].")
	}
	var rows []any
	switch m[1] {
	case "CreateMultiple", "UpdateMultiple", "UpsertMultiple":
		want := ""
		if tm := filterTableRe.FindStringSubmatch(f); tm != nil {
			want = tm[1]
		}
		for _, set := range sortedKeys(s.sc.bySet) {
			t := s.sc.bySet[set]
			if (want == "" || t.logical == want) && s.bulkSupported(t) {
				id := uuid.NewSHA1(uuid.NameSpaceOID, []byte(m[1]+"/"+t.logical)).String()
				rows = append(rows, map[string]any{"sdkmessagefilterid": id, "primaryobjecttypecode": t.logical})
			}
		}
	}
	if rows == nil {
		rows = []any{}
	}
	resp := jsonResp(http.StatusOK, map[string]any{"@odata.context": q.base + "$metadata#sdkmessagefilters", "value": rows})
	resp.rowsRead = len(rows)
	return resp, nil
}

// bulk implements POST /{set}/Microsoft.Dynamics.CRM.{CreateMultiple,UpdateMultiple,UpsertMultiple}
// with {"Targets":[{"@odata.type":"Microsoft.Dynamics.CRM.<logical>", ...}]}.
//
// What the docs say (Learn: bulk-operations, use-upsert-insert-update-record,
// webapi/reference/upsertmultiple):
//   - On standard tables a bulk operation is one transaction: "Any error that occurs in a bulk
//     operation with a standard table causes the entire operation to roll back."
//   - Every item needs "@odata.type"; UpsertMultiple returns 204, CreateMultiple 200 with Ids.
//   - UpsertMultiple's documented standard-table example identifies each record by an
//     alternate key in "@odata.id" ("Upsert operations frequently depend on alternate keys").
//     The upsert process for standard tables looks the record up by its primary key
//     (Entity.Id) when one is given, otherwise by the alternate key values, and creates it
//     (with that id / those key values) when missing. So a target may be identified by
//     "@odata.id" (primary-key or alternate-key form) or by the primary key column in the
//     body; Options.UpsertMultipleRequiresAlternateKey turns the primary-key forms off.
//   - Community report (microsoft/PowerPlatform-DataverseClient-Python#127): an alternate key
//     column present both in "@odata.id" and in the body fails on the create path with
//     400 0x80040216 "An unexpected error occurred." while the update path tolerates it.
//   - UpdateMultiple on a missing row: "<Table> With Ids = <guid> Do Not Exist".
//   - Not every standard table supports these messages: productpricelevel lists none, nor
//     do the sets in Options.BulkUnsupported. The refusal is 0x80040800 "The '<Message>'
//     method does not support entities of type '<table>'", with Options.BulkRefusalStatus
//     (400 by default; Microsoft documents no status for it).
//   - Faults.BulkTimeoutRows: a request with more targets fails with "SQL timeout expired"
//     (500), nothing written (the bulk-operation-errors troubleshooting page).
func (s *Server) bulk(x *tx, q *apiReq, t *table, name string) (*apiResp, *apiError) {
	switch name {
	case "CreateMultiple", "UpdateMultiple", "UpsertMultiple":
	default:
		return nil, errf(http.StatusNotFound, codeResourceNotFound, "Resource not found for the segment 'Microsoft.Dynamics.CRM.%s'.", name)
	}
	if !s.bulkSupported(t) {
		st := s.o.BulkRefusalStatus
		if st == 0 {
			st = http.StatusBadRequest
		}
		return nil, errf(st, codeNoMessageProcessor,
			"The '%s' method does not support entities of type '%s'. MessageProcessorCache returned MessageProcessor.Empty.", name, t.logical)
	}
	body, err := decodeBody(q.body)
	if err != nil {
		return nil, err
	}
	targets, ok := body["Targets"].([]any)
	if !ok || len(targets) == 0 {
		return nil, errf(http.StatusBadRequest, codePayloadError, "%s requires a non-empty Targets collection.", name)
	}
	if limit := s.currentFaults().BulkTimeoutRows; limit > 0 && len(targets) > limit {
		return nil, errf(http.StatusInternalServerError, codeSQLTimeout,
			"SQL timeout expired. CRM ErrorCode: -2147204783 Sql ErrorCode: -2146232060 Sql Number: -2")
	}
	want := "Microsoft.Dynamics.CRM." + t.logical
	sp := x.savepoint()
	var ids []any
	for i, it := range targets {
		m, ok := it.(map[string]any)
		if !ok {
			x.rollbackTo(sp)
			return nil, errf(http.StatusBadRequest, codePayloadError, "Targets[%d] is not an entity.", i)
		}
		if tp, _ := m["@odata.type"].(string); tp != want {
			x.rollbackTo(sp)
			return nil, errf(http.StatusBadRequest, codePayloadError,
				"Targets[%d]: every item needs \"@odata.type\": \"%s\" (got %q).", i, want, tp)
		}
		rec := map[string]any{}
		for k, v := range m {
			if k != "@odata.type" && k != "@odata.id" {
				rec[k] = v
			}
		}
		id, aerr := s.bulkOne(x, t, name, m, rec)
		if aerr != nil {
			x.rollbackTo(sp) // standard tables: the whole request rolls back
			return nil, aerr
		}
		ids = append(ids, id)
	}
	if name == "CreateMultiple" {
		return jsonResp(http.StatusOK, map[string]any{
			"@odata.context": q.base + "$metadata#Microsoft.Dynamics.CRM.CreateMultipleResponse", "Ids": ids}), nil
	}
	return noContent(), nil
}

func (s *Server) bulkOne(x *tx, t *table, name string, m, rec map[string]any) (string, *apiError) {
	switch name {
	case "CreateMultiple":
		r, err := s.createRow(x, t, "", rec, nil)
		if err != nil {
			return "", err
		}
		return r.id, nil
	case "UpdateMultiple":
		id, _ := rec[t.pk].(string)
		if id == "" {
			return "", errf(http.StatusBadRequest, codeInvalidArgument, "Entity Id must be specified for Update (%s).", t.pk)
		}
		old := x.get(t.logical, id)
		if old == nil {
			return "", errf(http.StatusNotFound, codeObjectDoesNotExist, "%s With Ids = %s Do Not Exist", titleCase(t.logical), id)
		}
		r, err := s.updateRow(x, t, old, rec, nil)
		if err != nil {
			return "", err
		}
		return r.id, nil
	}
	// UpsertMultiple
	var k rowKey
	if ref, ok := m["@odata.id"].(string); ok && ref != "" {
		p := strings.TrimPrefix(ref, "/")
		if i := strings.Index(p, apiRoot); i >= 0 {
			p = p[i+len(apiRoot):]
		}
		set, key, hasKey, perr := parseSegment(p)
		if perr != nil || !hasKey || set != t.set {
			return "", errf(http.StatusBadRequest, codePayloadError, "@odata.id '%s' does not address a %s record.", ref, t.logical)
		}
		var kerr *apiError
		if k, kerr = parseKey(t, key); kerr != nil {
			return "", kerr
		}
	} else if id, _ := rec[t.pk].(string); id != "" {
		k = rowKey{id: id}
	} else {
		return "", errf(http.StatusBadRequest, codeInvalidArgument, "UpsertMultiple targets must identify the record with @odata.id or %s.", t.pk)
	}
	if k.id != "" && s.o.UpsertMultipleRequiresAlternateKey {
		return "", errf(http.StatusBadRequest, codeInvalidArgument, "UpsertMultiple on standard tables needs an alternate key in @odata.id.")
	}
	existing := s.find(x, t, k)
	if existing == nil {
		for c := range k.alt {
			if _, dup := rec[c]; dup {
				return "", errf(http.StatusBadRequest, codeUnexpected, "An unexpected error occurred.")
			}
		}
		r, err := s.createRow(x, t, k.id, rec, k.alt)
		if err != nil {
			return "", err
		}
		return r.id, nil
	}
	r, err := s.updateRow(x, t, existing, rec, k.alt)
	if err != nil {
		return "", err
	}
	return r.id, nil
}

func titleCase(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
