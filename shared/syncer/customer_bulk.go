package syncer

import (
	"context"
	"sync"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/state"
)

// syncMany is the customers' bulk path: deletes and skips row by row, the contacts of
// everyone else planned together (one email look-up for the chunk, the parent accounts
// looked up and created together) and written with CreateMultiple/UpdateMultiple.
func (s *customerSyncer) syncMany(ctx context.Context, evs []*nop.Event, recs []*state.Record) ([]outcome, []error) {
	outs := make([]outcome, len(evs))
	errs := make([]error, len(evs))
	var singles, rows []int
	var emails []string
	for i, ev := range evs {
		c := ev.Customer
		switch {
		case c == nil || c.Deleted:
			singles = append(singles, i)
		case skipReason(c) != "":
			outs[i] = outcome{status: state.Skipped, reason: skipReason(c)}
		default:
			rows = append(rows, i)
			if recs[i].DataverseID == "" {
				emails = append(emails, deref(c.Email))
			}
		}
	}
	s.parallel(ctx, singles, func(ctx context.Context, i int) {
		outs[i], errs[i] = s.sync(ctx, evs[i], recs[i])
	})
	if len(rows) == 0 {
		return outs, errs
	}
	byEmail, err := s.contactsByEmail(ctx, emails)
	if err != nil {
		for _, i := range rows {
			errs[i] = err
		}
		return outs, errs
	}
	if byEmail == nil {
		byEmail = map[string][]dataverse.Record{}
	}
	plans := make([]*contactPlan, len(evs))
	s.parallel(ctx, rows, func(ctx context.Context, i int) {
		plans[i], errs[i] = s.planRow(ctx, evs[i].StoreID, evs[i].Customer, recs[i], byEmail)
	})
	// The parent accounts of the contacts to write, resolved together per store.
	companies := map[int][]string{}
	for _, i := range rows {
		if p := plans[i]; errs[i] == nil && p != nil && !p.unchanged && p.company != "" {
			companies[evs[i].StoreID] = append(companies[evs[i].StoreID], p.company)
		}
	}
	for store, names := range companies {
		s.resolveAccounts(ctx, store, names)
	}
	s.parallel(ctx, rows, func(ctx context.Context, i int) {
		if p := plans[i]; errs[i] == nil && p != nil && !p.unchanged {
			if errs[i] = s.planAccount(ctx, evs[i].StoreID, p, recs[i]); errs[i] != nil {
				plans[i] = nil
			}
		}
	})
	// One contact row per chunk: two customers that resolve to the same contact (the same
	// adopted email) must not be in one bulk request.
	var creates, updates []bulkRow
	seen := map[string]bool{}
	var later []int
	for _, i := range rows {
		p := plans[i]
		if errs[i] != nil || p == nil {
			continue
		}
		if p.unchanged {
			outs[i] = p.outcome()
			continue
		}
		if seen[p.id] {
			later = append(later, i)
			continue
		}
		seen[p.id] = true
		r := bulkRow{i: i, id: p.id, rec: p.record()}
		if p.isNew {
			creates = append(creates, r)
		} else {
			updates = append(updates, r)
		}
	}
	single := func(ctx context.Context, r bulkRow) error { return s.writeContact(ctx, plans[r.i]) }
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		(&bulkGroup{d: s.deps, create: true, set: "contacts", logical: "contact", pk: "contactid", single: single}).write(ctx, creates, errs)
	}()
	go func() {
		defer wg.Done()
		(&bulkGroup{d: s.deps, set: "contacts", logical: "contact", pk: "contactid", single: single}).write(ctx, updates, errs)
	}()
	wg.Wait()
	for _, i := range later {
		errs[i] = s.writeContact(ctx, plans[i])
	}
	for _, i := range rows {
		if p := plans[i]; errs[i] == nil && p != nil && !p.unchanged {
			p.apply(recs[i])
			outs[i] = p.outcome()
		}
	}
	return outs, errs
}
