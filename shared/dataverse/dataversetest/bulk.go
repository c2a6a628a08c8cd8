package dataversetest

import (
	"net/http"
	"strings"
)

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
//   - Not every standard table supports these messages: Options.BulkUnsupported.
func (s *Server) bulk(x *tx, q *apiReq, t *table, name string) (*apiResp, *apiError) {
	switch name {
	case "CreateMultiple", "UpdateMultiple", "UpsertMultiple":
	default:
		return nil, errf(http.StatusNotFound, codeResourceNotFound, "Resource not found for the segment 'Microsoft.Dynamics.CRM.%s'.", name)
	}
	for _, set := range s.o.BulkUnsupported {
		if set == t.set {
			return nil, errf(http.StatusNotFound, codeResourceNotFound, "Resource not found for the segment 'Microsoft.Dynamics.CRM.%s'.", name)
		}
	}
	body, err := decodeBody(q.body)
	if err != nil {
		return nil, err
	}
	targets, ok := body["Targets"].([]any)
	if !ok || len(targets) == 0 {
		return nil, errf(http.StatusBadRequest, codePayloadError, "%s requires a non-empty Targets collection.", name)
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
