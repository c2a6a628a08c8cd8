package syncer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/internal/cut"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/state"
)

// Extra keys the customer syncer keeps in state.Record.Extra.
const (
	extraAdoptedFrom    = "adoptedContact"   // the pre-existing contact id adopted by email
	extraAmbiguousEmail = "ambiguousEmail"   // number of active contacts sharing the email when we created our own
	extraAccountID      = "accountId"        // the parent account we set (so a removed company clears it)
	extraDeactivated    = "deactivated"      // "true": the contact was deactivated for a delete
	extraContactDeleted = "contactDeleted"   // "true": DELETE_POLICY=delete deleted the contact
	releasedContactKind = "released-contact" // state doc kind: contacts of deleted customers (key: contact id)
)

// customerSyncer maps customers to contacts (docs/dataverse-mapping.md "Customer → contact").
type customerSyncer struct {
	*deps
	accounts sync.Map // "<storeID>/<lower(company)>" → account id
	contacts sync.Map // guest contact key → cachedContact (guestContact, resolveGuests)
	ensuring sync.Map // "customer/<id>" → *sync.Mutex: one ensureContact per customer at a time
	// resolving: one chunk at a time resolves accounts (and guest contacts) in bulk, so
	// chunks naming the same company (or guest) don't create its row twice: the second
	// finds it in the cache. A create of a row that exists fails the bulk request.
	resolving sync.Mutex
}

// skipReason says why a customer does not become a contact ("" when it does).
func skipReason(c *nop.Customer) string {
	switch {
	case c.IsGuest:
		return "guest customer: guests reach Dynamics 365 through their orders"
	case !c.IsRegistered:
		return "not a registered customer"
	case strings.TrimSpace(deref(c.Email)) == "":
		return "customer has no email"
	}
	return ""
}

func (s *customerSyncer) sync(ctx context.Context, ev *nop.Event, rec *state.Record) (outcome, error) {
	c := ev.Customer
	if c == nil {
		return outcome{}, permanent(fmt.Errorf("event %s: customer data missing", ev.ID))
	}
	if c.Deleted {
		return s.delete(ctx, ev.StoreID, c, rec)
	}
	if reason := skipReason(c); reason != "" {
		return outcome{status: state.Skipped, reason: reason}, nil
	}
	plan, err := s.planContact(ctx, ev.StoreID, c, rec, nil)
	if err != nil {
		return outcome{}, err
	}
	if plan.unchanged {
		return plan.outcome(), nil
	}
	if err := s.writeContact(ctx, plan); err != nil {
		return outcome{}, err
	}
	plan.apply(rec)
	return plan.outcome(), nil
}

// contactPlan is one contact write, worked out before it is sent (so the bulk path can
// send many at once).
type contactPlan struct {
	id        string
	fields    dataverse.Record // mapped columns, without the parent account
	company   string
	accountID string // resolved parent account ("" for none)
	clear     bool   // clear the parent account (company removed)
	hash      string
	unchanged bool
	isNew     bool // no row known for it yet (state had no id and nothing was adopted)
	note      string
	extra     map[string]string
	react     bool // reactivate a contact deactivated by an earlier delete
}

func (p *contactPlan) record() dataverse.Record {
	r := make(dataverse.Record, len(p.fields)+3)
	for k, v := range p.fields {
		r[k] = v
	}
	switch {
	case p.accountID != "":
		r["parentcustomerid_account@odata.bind"] = dataverse.Bind("accounts", p.accountID)
	case p.clear:
		r["parentcustomerid_account@odata.bind"] = nil
	}
	if p.react {
		r["statecode"], r["statuscode"] = 0, 1
	}
	return r
}

func (p *contactPlan) apply(rec *state.Record) {
	if rec.Extra == nil {
		rec.Extra = map[string]string{}
	}
	for k, v := range p.extra {
		if v == "" {
			delete(rec.Extra, k)
		} else {
			rec.Extra[k] = v
		}
	}
	if p.accountID != "" {
		rec.Extra[extraAccountID] = p.accountID
	} else {
		delete(rec.Extra, extraAccountID)
	}
	delete(rec.Extra, extraDeactivated)
}

func (p *contactPlan) outcome() outcome {
	return outcome{status: state.Synced, reason: p.note, dataverseID: p.id, hash: p.hash}
}

// checkEmail refuses, for good, an email longer than a contact's emailaddress1 (see
// dataverse.CheckContactEmail; the store reader refuses such rows alike).
func checkEmail(field, email string) error {
	if err := dataverse.CheckContactEmail(field, email); err != nil {
		return permanent(err)
	}
	return nil
}

// contactFields maps a registered customer (docs/dataverse-mapping.md).
func contactFields(c *nop.Customer) dataverse.Record {
	email := strings.TrimSpace(deref(c.Email))
	a := c.Address
	if a == nil {
		a = &nop.Address{}
	}
	last := strings.TrimSpace(deref(c.LastName))
	if last == "" {
		last, _, _ = strings.Cut(email, "@")
	}
	phone := strings.TrimSpace(deref(c.Phone))
	if phone == "" {
		phone = strings.TrimSpace(deref(a.Phone))
	}
	return contactColumns(deref(c.FirstName), last, email, phone, a, fmt.Sprintf("nopCommerce customer %d", c.ID))
}

// contactColumns is the contact row of docs/dataverse-mapping.md, cut to the columns' lengths;
// registered customers and guests (from their billing address) share it.
func contactColumns(first, last, email, phone string, a *nop.Address, description string) dataverse.Record {
	return dataverse.Record{
		"firstname":                orNull(first, 50),
		"lastname":                 orNull(last, 50),
		"emailaddress1":            orNull(email, 100),
		"telephone1":               orNull(phone, 50),
		"address1_line1":           orNull(deref(a.Address1), 250),
		"address1_line2":           orNull(deref(a.Address2), 250),
		"address1_city":            orNull(deref(a.City), 80),
		"address1_county":          orNull(deref(a.County), 50),
		"address1_stateorprovince": orNull(deref(a.StateProvince), 50),
		"address1_postalcode":      orNull(deref(a.ZipPostalCode), 20),
		"address1_country":         orNull(deref(a.Country), 80),
		"description":              description,
	}
}

// planContact works out the contact write for a registered customer: the row (state,
// adoption by email or our deterministic id), the mapped columns and the parent account.
// Nothing is written except a missing account.
// byEmail (bulk path) holds the active contacts per lower-cased email looked up for a
// whole chunk; nil looks them up here.
func (s *customerSyncer) planContact(ctx context.Context, storeID int, c *nop.Customer, rec *state.Record, byEmail map[string][]dataverse.Record) (*contactPlan, error) {
	p, err := s.planRow(ctx, storeID, c, rec, byEmail)
	if err != nil || p.unchanged {
		return p, err
	}
	if err := s.planAccount(ctx, storeID, p, rec); err != nil {
		return nil, err
	}
	return p, nil
}

// planRow is planContact without the parent account.
func (s *customerSyncer) planRow(ctx context.Context, storeID int, c *nop.Customer, rec *state.Record, byEmail map[string][]dataverse.Record) (*contactPlan, error) {
	if err := checkEmail("email", strings.TrimSpace(deref(c.Email))); err != nil {
		return nil, err
	}
	p := &contactPlan{fields: contactFields(c), company: strings.TrimSpace(deref(c.Company)), extra: map[string]string{}}
	p.hash = hashOf(p.fields, "company="+strings.ToLower(p.company))
	if rec.Status == state.Synced && rec.DataHash == p.hash && rec.DataverseID != "" && rec.Extra[extraDeactivated] == "" {
		p.id, p.unchanged = rec.DataverseID, true
		return p, nil
	}
	p.react = rec.Extra[extraDeactivated] != ""
	if rec.DataverseID != "" {
		p.id = rec.DataverseID
	} else {
		cands := byEmail
		if cands == nil {
			var err error
			if cands, err = s.contactsByEmail(ctx, []string{deref(c.Email)}); err != nil {
				return nil, err
			}
		}
		own := deterministicID(storeID, "contact", strconv.Itoa(c.ID))
		if err := s.choose(ctx, p, own, c.ID, cands[strings.ToLower(strings.TrimSpace(deref(c.Email)))]); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// choose picks the contact row for a customer the state knows no row for, from the active
// contacts with its email: our own deterministic row when it exists (state was wiped),
// else the single other one (adopted), else (none, or ambiguous) our own.
// customerID < 0 is a guest: contacts of registered customers are matched too.
func (s *customerSyncer) choose(ctx context.Context, p *contactPlan, own string, customerID int, cands []dataverse.Record) error {
	var others []string
	for _, r := range cands {
		id := strings.ToLower(str(r["contactid"]))
		if id == own {
			// A guest's own row may be a contact a registered customer adopted and whose
			// delete released it (DELETE_POLICY=ignore leaves it active): not the guest's.
			if customerID < 0 {
				released, err := s.released(ctx, id)
				if err != nil {
					return err
				}
				if released {
					continue
				}
			}
			p.id = own
			return nil
		}
		// A contact another customer of ours owns is never adopted; nor is the contact
		// of a deleted customer. One with this customer's description and email is this
		// customer's, whichever storeId it was written under: nopCommerce shares customers
		// between the stores of an install.
		if d := str(r["description"]); customerID >= 0 && strings.HasPrefix(d, "nopCommerce customer ") && d != fmt.Sprintf("nopCommerce customer %d", customerID) {
			continue
		}
		released, err := s.released(ctx, id)
		if err != nil {
			return err
		}
		if !released {
			others = append(others, id)
		}
	}
	switch len(others) {
	case 0:
		p.id, p.isNew = own, true
		p.extra[extraAmbiguousEmail] = ""
	case 1:
		p.id = others[0]
		p.extra[extraAdoptedFrom] = others[0]
		p.note = "adopted the existing contact with the same email"
	default:
		p.id, p.isNew = own, true
		p.extra[extraAmbiguousEmail] = strconv.Itoa(len(others))
		p.note = fmt.Sprintf("%d active contacts in Dynamics 365 have this email; created a separate contact instead of guessing", len(others))
	}
	return nil
}

// planAccount resolves the parent account for the company (or plans clearing it).
func (s *customerSyncer) planAccount(ctx context.Context, storeID int, p *contactPlan, rec *state.Record) error {
	if p.company == "" {
		// Cleared when the store removed it (docs/dataverse-mapping.md): the state says
		// whether the app set one. When it knows nothing of the row (a wiped state) and the
		// row is the app's own, its parent account is the app's to clear too; an adopted
		// row keeps one an admin set.
		known := rec != nil && rec.DataverseID != ""
		p.clear = rec != nil && rec.Extra[extraAccountID] != "" || !known && !p.isNew && madeByTheApp(p.id)
		return nil
	}
	id, err := s.account(ctx, storeID, p.company)
	if err != nil {
		return err
	}
	p.accountID = id
	return nil
}

// account finds the account named company (case-insensitively) or creates it with a
// deterministic id. Ids are cached per process.
func (s *customerSyncer) account(ctx context.Context, storeID int, company string) (string, error) {
	key := strconv.Itoa(storeID) + "/" + strings.ToLower(company)
	if v, ok := s.accounts.Load(key); ok {
		return v.(string), nil
	}
	var found string
	err := s.dv.Query(ctx, "accounts", dataverse.Query{
		Select: []string{"accountid", "name"},
		Filter: "name eq " + odataString(company),
		Top:    10,
	}, func(r dataverse.Record) error {
		if found == "" && strings.EqualFold(strings.TrimSpace(str(r["name"])), company) {
			found = strings.ToLower(str(r["accountid"]))
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("looking up account %q: %w", company, err)
	}
	if found == "" {
		found = deterministicID(storeID, "account", strings.ToLower(company))
		if _, err := s.dv.Upsert(ctx, "accounts", found, dataverse.Record{"name": cut.Runes(company, 160)}, dataverse.Upsert); err != nil {
			return "", fmt.Errorf("creating account %q: %w", company, err)
		}
	}
	s.accounts.Store(key, found)
	return found, nil
}

// resolveAccounts resolves the accounts of a chunk's companies into the cache account reads:
// one look-up for all of them (as few requests as the filter bounds allow), and the
// missing ones created together with CreateMultiple, so an import of customers with
// companies costs a few requests per chunk rather than a look-up and a write per company.
// A company it could not resolve is left to account, which tries it on its own.
func (s *customerSyncer) resolveAccounts(ctx context.Context, storeID int, companies []string) {
	s.resolving.Lock()
	defer s.resolving.Unlock()
	want := map[string]string{} // lower-cased name → the name as first given
	var conds []string
	for _, c := range companies {
		k := strings.ToLower(c)
		if _, ok := want[k]; ok || c == "" {
			continue
		}
		if _, ok := s.accounts.Load(strconv.Itoa(storeID) + "/" + k); ok {
			continue
		}
		want[k] = c
		conds = append(conds, "name eq "+odataString(c))
	}
	if len(want) == 0 {
		return
	}
	found := map[string]string{}
	for _, filter := range orFilters(conds, maxFilterBytes, nil) {
		err := s.dv.Query(ctx, "accounts", dataverse.Query{Select: []string{"accountid", "name"}, Filter: filter},
			func(r dataverse.Record) error {
				k := strings.ToLower(strings.TrimSpace(str(r["name"])))
				if _, ok := want[k]; ok && found[k] == "" {
					found[k] = strings.ToLower(str(r["accountid"]))
				}
				return nil
			})
		if err != nil {
			s.log.Warn("looking up a chunk's accounts; looking them up one by one", "error", err)
			return
		}
	}
	var rows []bulkRow
	var names []string
	for k, c := range want {
		if found[k] == "" {
			rows = append(rows, bulkRow{i: len(rows), id: deterministicID(storeID, "account", k), rec: dataverse.Record{"name": cut.Runes(c, 160)}})
			names = append(names, k)
		}
	}
	errs := make([]error, len(rows))
	(&bulkGroup{d: s.deps, create: true, set: "accounts", logical: "account", pk: "accountid",
		single: func(ctx context.Context, r bulkRow) error {
			_, err := s.dv.Upsert(ctx, "accounts", r.id, r.rec, dataverse.Upsert)
			return err
		}}).write(ctx, rows, errs)
	for k, r := range rows {
		if errs[k] == nil {
			found[names[k]] = r.id
		}
	}
	for k, id := range found {
		s.accounts.Store(strconv.Itoa(storeID)+"/"+k, id)
	}
}

// writeContact sends one planned contact.
func (s *customerSyncer) writeContact(ctx context.Context, p *contactPlan) error {
	_, err := s.dv.Upsert(ctx, "contacts", p.id, p.record(), dataverse.Upsert)
	if err != nil && p.accountID != "" && dataverse.IsNotFound(err) {
		// The cached account may have been deleted in Dynamics 365: forget it and let
		// the retry look it up again.
		s.forgetAccounts()
		return transient(fmt.Errorf("writing contact %s: %w", p.id, err))
	}
	if err != nil {
		return fmt.Errorf("writing contact %s: %w", p.id, err)
	}
	return nil
}

func (s *customerSyncer) forgetAccounts() {
	s.accounts.Range(func(k, _ any) bool { s.accounts.Delete(k); return true })
}

// contactsByEmail returns the active contacts per lower-cased email, querying a few
// emails per request.
func (s *customerSyncer) contactsByEmail(ctx context.Context, emails []string) (map[string][]dataverse.Record, error) {
	out := map[string][]dataverse.Record{}
	uniq, seen := uniqueEmails(emails)
	conds := make([]string, len(uniq))
	for i, m := range uniq {
		conds[i] = "emailaddress1 eq " + odataString(m)
	}
	for _, filter := range orFilters(conds, maxFilterBytes, func(s string) string { return "statecode eq 0 and (" + s + ")" }) {
		err := s.dv.Query(ctx, "contacts", dataverse.Query{
			Select: []string{"contactid", "emailaddress1", "description"},
			Filter: filter,
		}, func(r dataverse.Record) error {
			k := strings.ToLower(strings.TrimSpace(str(r["emailaddress1"])))
			if seen[k] {
				out[k] = append(out[k], r)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("looking up contacts by email: %w", err)
		}
	}
	return out, nil
}

// uniqueEmails is emails trimmed, without empty ones and repeats (case-insensitively), and
// the set of their lower-cased forms.
func uniqueEmails(emails []string) ([]string, map[string]bool) {
	seen := map[string]bool{}
	var uniq []string
	for _, m := range emails {
		m = strings.TrimSpace(m)
		if m == "" || seen[strings.ToLower(m)] {
			continue
		}
		seen[strings.ToLower(m)] = true
		uniq = append(uniq, m)
	}
	return uniq, seen
}

// guestLookup reads, in one query per URL's worth, the active contacts of emails (as
// contactsByEmail) and the statecode of the contacts ids (guests' own rows, active or not).
func (s *customerSyncer) guestLookup(ctx context.Context, emails, ids []string) (map[string][]dataverse.Record, map[string]int, error) {
	byEmail, states := map[string][]dataverse.Record{}, map[string]int{}
	uniq, seen := uniqueEmails(emails)
	wantID := map[string]bool{}
	var conds []string
	for _, m := range uniq {
		conds = append(conds, "(statecode eq 0 and emailaddress1 eq "+odataString(m)+")")
	}
	for _, id := range ids {
		if id = strings.ToLower(id); id != "" && !wantID[id] {
			wantID[id] = true
			conds = append(conds, "contactid eq "+id)
		}
	}
	for _, filter := range orFilters(conds, maxFilterBytes, nil) {
		err := s.dv.Query(ctx, "contacts", dataverse.Query{
			Select: []string{"contactid", "emailaddress1", "description", "statecode"},
			Filter: filter,
		}, func(r dataverse.Record) error {
			id, st := strings.ToLower(str(r["contactid"])), intField(r, "statecode")
			if wantID[id] {
				states[id] = st
			}
			if k := strings.ToLower(strings.TrimSpace(str(r["emailaddress1"]))); st == 0 && seen[k] {
				byEmail[k] = append(byEmail[k], r)
			}
			return nil
		})
		if err != nil {
			return nil, nil, fmt.Errorf("looking up guest contacts: %w", err)
		}
	}
	return byEmail, states, nil
}

// released reports whether a contact belonged to a customer deleted in nopCommerce.
func (s *customerSyncer) released(ctx context.Context, contactID string) (bool, error) {
	_, err := s.st.GetDoc(ctx, releasedContactKind, strings.ToLower(contactID))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, state.ErrNotFound):
		return false, nil
	}
	return false, transient(fmt.Errorf("reading released contacts: %w", err))
}

func (s *customerSyncer) releaseContact(ctx context.Context, contactID string, customerID int) error {
	// Guests this process resolved to the contact must not be given it again.
	s.contacts.Range(func(k, v any) bool {
		if c, _ := v.(cachedContact); strings.EqualFold(c.id, contactID) {
			s.contacts.Delete(k)
		}
		return true
	})
	doc := &state.Doc{Kind: releasedContactKind, Key: strings.ToLower(contactID), Value: []byte(strconv.Itoa(customerID))}
	err := s.st.SaveDoc(ctx, doc)
	if err != nil && !errors.Is(err, state.ErrConflict) {
		return transient(fmt.Errorf("recording released contact: %w", err))
	}
	return nil
}

// delete applies DELETE_POLICY to a deleted customer's contact.
func (s *customerSyncer) delete(ctx context.Context, storeID int, c *nop.Customer, rec *state.Record) (outcome, error) {
	policy := s.settings.deletePolicy()
	hash := hashOf(dataverse.Record{"deleted": true, "policy": policy})
	id := rec.DataverseID
	if rec.Status == state.Synced && rec.DataHash == hash {
		return outcome{status: state.Synced, reason: rec.Reason, dataverseID: id, hash: hash}, nil
	}
	if id == "" {
		// Never synced (or state lost): the row, if any, has our deterministic id.
		id = deterministicID(storeID, "contact", strconv.Itoa(c.ID))
	}
	// From now on this contact is never matched by email for anyone.
	if err := s.releaseContact(ctx, id, c.ID); err != nil {
		return outcome{}, err
	}
	switch policy {
	case DeleteIgnore:
		return outcome{status: state.Skipped, reason: "deleted in nopCommerce; DELETE_POLICY=ignore keeps the contact", dataverseID: rec.DataverseID, hash: hash}, nil
	case DeleteDelete:
		err := s.dv.Delete(ctx, "contacts", id)
		if err == nil || dataverse.IsNotFound(err) {
			if rec.Extra == nil {
				rec.Extra = map[string]string{}
			}
			rec.Extra[extraContactDeleted] = "true"
			return outcome{status: state.Synced, reason: "deleted in nopCommerce; contact deleted", dataverseID: id, hash: hash}, nil
		}
		if isTransient(err) {
			return outcome{}, fmt.Errorf("deleting contact %s: %w", id, err)
		}
		// Dataverse refuses while orders point at the contact: deactivate instead.
		if derr := s.deactivateContact(ctx, id, rec); derr != nil {
			return outcome{}, derr
		}
		return outcome{status: state.Synced, reason: "deleted in nopCommerce; Dynamics 365 refused to delete the contact (" + shortErr(err) + "), so it was deactivated", dataverseID: id, hash: hash}, nil
	default:
		err := s.deactivateContact(ctx, id, rec)
		if dataverse.IsNotFound(err) {
			return outcome{status: state.Synced, reason: "deleted in nopCommerce before it reached Dynamics 365", hash: hash}, nil
		}
		if err != nil {
			return outcome{}, err
		}
		return outcome{status: state.Synced, reason: "deleted in nopCommerce; contact deactivated", dataverseID: id, hash: hash}, nil
	}
}

func (s *customerSyncer) deactivateContact(ctx context.Context, id string, rec *state.Record) error {
	if err := s.dv.Update(ctx, "contacts", id, dataverse.Record{"statecode": 1, "statuscode": 2}); err != nil {
		return fmt.Errorf("deactivating contact %s: %w", id, err)
	}
	if rec.Extra == nil {
		rec.Extra = map[string]string{}
	}
	rec.Extra[extraDeactivated] = "true"
	return nil
}

// liveContact is the contact a customer's record names, "" when none: not written yet,
// or deleted by DELETE_POLICY=delete (an older order then writes it again).
func liveContact(rec *state.Record) string {
	if rec.Extra[extraContactDeleted] != "" {
		return ""
	}
	return rec.DataverseID
}

// ensureContact returns the contact of an order's customer, creating it from the order's
// data when the app has not synced that customer yet. A registered customer gets the
// contact the customer sync would give it (state, adoption, deterministic id) and the
// customer's state remembers it; a guest's contact is made from the billing address and
// matched by email like any other.
func (s *customerSyncer) ensureContact(ctx context.Context, storeID int, c *nop.Customer, billing *nop.Address) (_ string, rerr error) {
	if c == nil {
		return "", permanent(errors.New("order has no customer"))
	}
	mu, _ := s.ensuring.LoadOrStore("customer/"+strconv.Itoa(c.ID), &sync.Mutex{})
	mu.(*sync.Mutex).Lock()
	defer mu.(*sync.Mutex).Unlock()
	rec, err := s.st.Get(ctx, state.Customer, strconv.Itoa(c.ID))
	switch {
	case err == nil:
		if id := liveContact(rec); id != "" {
			return id, nil
		}
	case errors.Is(err, state.ErrNotFound):
		rec = nil
	default:
		return "", transient(fmt.Errorf("reading customer %d state: %w", c.ID, err))
	}
	if !c.Deleted && skipReason(c) == "" {
		claimed, err := s.leases.claimForOrder(ctx, state.Customer, strconv.Itoa(c.ID), rec)
		if err != nil {
			return "", err
		}
		defer s.leases.releaseForOrder(ctx, claimed, &rerr) // rerr: the err below is the block's
		// An order older than the customer's delete, which deleted the contact
		// (DELETE_POLICY=delete): in business order the order would have come first and
		// the delete would have been refused and deactivated the contact instead. So the
		// contact is written again from the order's copy, deactivated, as it would be.
		recreate := claimed.Extra[extraContactDeleted] != ""
		if id := liveContact(claimed); id != "" { // written by the customer's own event while we waited
			return id, nil
		}
		fresh := neverApplied(claimed)
		kctx, stop := s.leases.keep(ctx, []*state.Record{claimed})
		defer stop()
		p, err := s.planContact(kctx, storeID, c, claimed, nil)
		if err != nil {
			return "", leaseLost(kctx, err)
		}
		if !p.unchanged {
			if err := s.writeContact(kctx, p); err != nil {
				return "", leaseLost(kctx, err)
			}
		}
		claimed.DataverseID = p.id
		if recreate {
			if err := s.deactivateContact(kctx, p.id, claimed); err != nil {
				return "", leaseLost(kctx, err)
			}
			delete(claimed.Extra, extraContactDeleted)
			claimed.Reason = "deleted in nopCommerce; the contact was deleted, then written again (deactivated) for an older order that points at it"
			return p.id, nil
		}
		if fresh {
			// The customer's own event, when it comes, updates this contact (its order key
			// is newer than none).
			claimed.Status, claimed.SyncedAt, claimed.DataHash = state.Synced, s.now(), p.hash
			claimed.Reason = "contact written from an order; the customer's own event has not arrived yet"
			p.apply(claimed)
		}
		return p.id, nil
	}
	return s.guestContact(ctx, storeID, c, billing)
}

// guestRow is the contact a guest's orders get: its cache key, our deterministic id, the
// email it is matched by ("" for none) and the columns it is written with.
type guestRow struct {
	cacheKey, own, email string
	emailField           string // the event's field the email came from
	rec                  dataverse.Record
	// storeOwn: the id a guest of this email had in this store before guests were one
	// contact across stores ("" in store 1, where it is own): still the guest's own row.
	storeOwn string
}

// chooseGuest picks the contact of a guest with an email among cands (the active contacts
// of the email): its row under its store's earlier id, unless a deleted customer that had
// adopted it released it; else as choose decides.
func (s *customerSyncer) chooseGuest(ctx context.Context, g guestRow, cands []dataverse.Record) (*contactPlan, error) {
	p := &contactPlan{extra: map[string]string{}}
	for _, r := range cands {
		if id := strings.ToLower(str(r["contactid"])); g.storeOwn != "" && id == g.storeOwn {
			released, err := s.released(ctx, id)
			if err != nil {
				return nil, err
			}
			if !released {
				p.id = id
				return p, nil
			}
		}
	}
	if err := s.choose(ctx, p, g.own, -1, cands); err != nil {
		return nil, err
	}
	return p, nil
}

func newGuestRow(storeID int, c *nop.Customer, billing *nop.Address) guestRow {
	if billing == nil {
		billing = &nop.Address{}
	}
	email, field := strings.TrimSpace(deref(billing.Email)), "billingAddress.email"
	if email == "" {
		email, field = strings.TrimSpace(deref(c.Email)), "customer.email"
	}
	key := "customer:" + strconv.Itoa(c.ID)
	if email != "" {
		key = "guest:" + strings.ToLower(email)
	}
	first := strings.TrimSpace(deref(billing.FirstName))
	last := strings.TrimSpace(deref(billing.LastName))
	if first == "" {
		first = strings.TrimSpace(deref(c.FirstName))
	}
	if last == "" {
		last = strings.TrimSpace(deref(c.LastName))
	}
	if last == "" {
		last, _, _ = strings.Cut(email, "@")
	}
	if last == "" {
		last = "Guest " + strconv.Itoa(c.ID)
	}
	phone := strings.TrimSpace(deref(billing.Phone))
	idStore := storeID
	if email != "" {
		// A guest is one contact per email across the stores of an install (contacts are
		// matched by email, and nopCommerce shares customers between its stores): with an
		// id per store, two stores' orders of one guest written at once (one import array,
		// two workers) made two contacts. Store 1's id, so ids written before stay.
		idStore = 1
	}
	storeOwn := ""
	if idStore != storeID {
		storeOwn = deterministicID(storeID, "contact", key)
	}
	return guestRow{
		storeOwn:   storeOwn,
		cacheKey:   strconv.Itoa(idStore) + "/" + key,
		own:        deterministicID(idStore, "contact", key),
		email:      email,
		emailField: field,
		rec:        contactColumns(first, last, email, phone, billing, fmt.Sprintf("nopCommerce guest (customer %d)", c.ID)),
	}
}

// guestContact finds or writes the contact of a guest (or a customer without email) from
// the billing address.
func (s *customerSyncer) guestContact(ctx context.Context, storeID int, c *nop.Customer, billing *nop.Address) (string, error) {
	g := newGuestRow(storeID, c, billing)
	if err := checkEmail(g.emailField, g.email); err != nil {
		return "", err
	}
	if id, ok := s.cachedGuest(g.cacheKey); ok {
		return id, nil
	}
	own := g.own
	if g.email != "" {
		cands, states, err := s.guestLookup(ctx, []string{g.email}, []string{g.own})
		if err != nil {
			return "", err
		}
		p, err := s.chooseGuest(ctx, g, cands[strings.ToLower(g.email)])
		if err != nil {
			return "", err
		}
		if !p.isNew {
			s.cacheGuest(g.cacheKey, p.id)
			return p.id, nil
		}
		if own, err = s.unreleased(ctx, g.own, states); err != nil {
			return "", err
		}
	}
	if _, err := s.dv.Upsert(ctx, "contacts", own, g.rec, dataverse.Upsert); err != nil {
		return "", fmt.Errorf("writing guest contact: %w", err)
	}
	s.cacheGuest(g.cacheKey, own)
	return own, nil
}

// unreleased is the id a new guest contact is written under: own, unless own is a
// released contact (a guest's contact a registered customer adopted, deactivated when that
// customer was deleted, or left active under DELETE_POLICY=ignore: docs/dataverse-mapping.md,
// a deleted customer is never matched again) or an inactive one (the record of its release
// is lost with a wiped state), then the first of its deterministic successors that is
// neither. Only a row Dynamics 365 has can be either, so the record of a release is read
// for an active row alone: a new guest, whose row does not exist, costs no state read.
// states holds the statecode of contacts read ahead (nil: own is read).
func (s *customerSyncer) unreleased(ctx context.Context, own string, states map[string]int) (string, error) {
	for range maxSuccessors {
		st, exists := states[own]
		if states == nil {
			row, err := s.dv.Retrieve(ctx, "contacts", own, "statecode")
			switch {
			case err == nil:
				st, exists = intField(row, "statecode"), true
			case !dataverse.IsNotFound(err):
				return "", fmt.Errorf("reading guest contact %s: %w", own, err)
			}
		}
		if !exists {
			return own, nil // no row: a new contact (also where a released one was deleted)
		}
		if st == 0 {
			gone, err := s.released(ctx, own)
			if err != nil {
				return "", err
			}
			if !gone {
				return own, nil
			}
		}
		own, states = deterministicID(0, "contact", "after:"+own), nil
	}
	return "", permanent(fmt.Errorf("guest contact: %d contacts of this email were released by deleted customers", maxSuccessors))
}

// maxSuccessors bounds the chain of guest contact ids unreleased follows.
const maxSuccessors = 16

// guestCacheTTL bounds how long a process reuses a guest's contact without looking it up:
// another instance may release that contact meanwhile (its customer deleted), which this
// process learns only from Dynamics 365 or the state.
const guestCacheTTL = 10 * time.Minute

type cachedContact struct {
	id string
	at time.Time
}

func (s *customerSyncer) cachedGuest(key string) (string, bool) {
	v, ok := s.contacts.Load(key)
	if !ok {
		return "", false
	}
	c := v.(cachedContact)
	if time.Since(c.at) > guestCacheTTL {
		s.contacts.CompareAndDelete(key, v)
		return "", false
	}
	return c.id, true
}

func (s *customerSyncer) cacheGuest(key, id string) {
	s.contacts.Store(key, cachedContact{id: id, at: time.Now()})
}

// guestRef is an order's guest customer and billing address.
type guestRef struct {
	storeID int
	c       *nop.Customer
	billing *nop.Address
}

// resolveGuests finds or writes the contacts of an order chunk's guests together, into
// the cache guestContact reads: one email look-up for all of them, and the missing
// contacts created with CreateMultiple, instead of a look-up and a write per guest. A
// guest it could not resolve is left to guestContact.
func (s *customerSyncer) resolveGuests(ctx context.Context, guests []guestRef) {
	s.resolving.Lock()
	defer s.resolving.Unlock()
	var rows []guestRow
	seen := map[string]bool{}
	var emails []string
	for _, g := range guests {
		r := newGuestRow(g.storeID, g.c, g.billing)
		if seen[r.cacheKey] || checkEmail(r.emailField, r.email) != nil { // refused by guestContact
			continue
		}
		seen[r.cacheKey] = true
		if _, ok := s.cachedGuest(r.cacheKey); ok {
			continue
		}
		rows = append(rows, r)
		if r.email != "" {
			emails = append(emails, r.email)
		}
	}
	if len(rows) == 0 {
		return
	}
	// The emails' contacts and the guests' own rows, read together: an own row may exist
	// (to update, not create) or be a deactivated contact (unreleased).
	ownIDs := make([]string, len(rows))
	for k, r := range rows {
		ownIDs[k] = r.own
	}
	cands, states, err := s.guestLookup(ctx, emails, ownIDs)
	if err != nil {
		s.log.Warn("looking up an order chunk's guest contacts; looking them up one by one", "error", err)
		return
	}
	var fresh []guestRow // guests without a contact to adopt
	for _, r := range rows {
		if r.email != "" {
			p, err := s.chooseGuest(ctx, r, cands[strings.ToLower(r.email)])
			if err != nil {
				continue // left to guestContact
			}
			if !p.isNew {
				s.cacheGuest(r.cacheKey, p.id)
				continue
			}
		}
		fresh = append(fresh, r)
	}
	if len(fresh) == 0 {
		return
	}
	// Rows Dynamics 365 has (a guest without email whose contact was written before: its id
	// is the customer's) are updated, the others created: a create of an existing row
	// fails its whole request.
	var creates, updates []bulkRow
	var createKeys, updateKeys []string // the cache key of each row
	for _, r := range fresh {
		own := r.own
		if r.email != "" { // a guest without one is never matched by email: its row is its own
			if own, err = s.unreleased(ctx, r.own, states); err != nil {
				continue // left to guestContact
			}
		}
		if st, ok := states[own]; ok && st == 0 {
			updates = append(updates, bulkRow{i: len(updates), id: own, rec: r.rec})
			updateKeys = append(updateKeys, r.cacheKey)
			continue
		}
		creates = append(creates, bulkRow{i: len(creates), id: own, rec: r.rec})
		createKeys = append(createKeys, r.cacheKey)
	}
	single := func(ctx context.Context, r bulkRow) error {
		_, err := s.dv.Upsert(ctx, "contacts", r.id, r.rec, dataverse.Upsert)
		return err
	}
	for _, w := range []struct {
		create bool
		rows   []bulkRow
		keys   []string
	}{{true, creates, createKeys}, {false, updates, updateKeys}} {
		errs := make([]error, len(w.rows))
		(&bulkGroup{d: s.deps, create: w.create, set: "contacts", logical: "contact", pk: "contactid", single: single}).write(ctx, w.rows, errs)
		for k, r := range w.rows {
			if errs[k] == nil {
				s.cacheGuest(w.keys[k], r.id)
			}
		}
	}
}

// hashOf hashes what would be written (JSON of the record, keys sorted by encoding/json)
// plus any extra strings.
func hashOf(r dataverse.Record, extra ...string) string {
	h := sha256.New()
	b, _ := json.Marshal(r)
	h.Write(b)
	for _, s := range extra {
		h.Write([]byte{0})
		h.Write([]byte(s))
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// orNull trims s and cuts it to n runes; "" becomes null (clearing the column).
func orNull(s string, n int) any {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil
	}
	return cut.Runes(s, n)
}

// shortErr is an error's Dataverse message when it has one.
func shortErr(err error) string {
	var de *dataverse.Error
	if errors.As(err, &de) && de.Message != "" {
		return de.Message
	}
	return err.Error()
}
