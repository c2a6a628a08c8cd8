package syncer

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/nopsync/nopsync/shared/dataverse"
)

// orderPrefetch holds what one query per group of orders read of Dynamics 365 at the start
// of a chunk: the salesorders' states and their invoices. It stands in for the per-order
// reads (same attempt, same lease), so the crash guarantees are unchanged.
type orderPrefetch struct {
	mu       sync.Mutex
	orders   map[string]salesOrderState // lower-case salesorderid → state; absent: no row
	invoices map[string]invoiceInfo     // lower-case salesorderid → its first invoice
	done     map[string]bool            // order ids covered by the prefetch
}

type invoiceInfo struct {
	id      string
	paid    bool
	created string
}

func (p *orderPrefetch) order(id string) (salesOrderState, bool) {
	if p == nil {
		return salesOrderState{}, false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	id = strings.ToLower(id)
	if !p.done[id] {
		return salesOrderState{}, false
	}
	return p.orders[id], true
}

// invoice returns the prefetched invoice of an order; ok is false when the order was not
// prefetched (the caller queries).
func (p *orderPrefetch) invoice(orderID string) (inv invoiceInfo, ok bool) {
	if p == nil {
		return invoiceInfo{}, false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	orderID = strings.ToLower(orderID)
	if !p.done[orderID] {
		return invoiceInfo{}, false
	}
	return p.invoices[orderID], true
}

// absent records ids as covered, with no salesorder and no invoice (orders whose
// headers' creation tells whether they exist, headersFirst).
func (p *orderPrefetch) absent(ids []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, id := range ids {
		p.done[strings.ToLower(id)] = true
	}
}

// prefetch reads the states and invoices of orderIDs, a query per group of ids (as many
// as one URL takes). A failed query leaves its orders out: they are read one by one later.
func (s *orderSyncer) prefetch(ctx context.Context, orderIDs []string) *orderPrefetch {
	p := &orderPrefetch{orders: map[string]salesOrderState{}, invoices: map[string]invoiceInfo{}, done: map[string]bool{}}
	var groups [][]string
	for _, n := range orGroups(eqConds("salesorderid", orderIDs), maxFilterBytes) {
		groups = append(groups, orderIDs[:n])
		orderIDs = orderIDs[n:]
	}
	s.parallelN(ctx, len(groups), func(ctx context.Context, gi int) {
		g := groups[gi]
		orders := map[string]salesOrderState{}
		err := s.dv.Query(ctx, setSalesOrders, dataverse.Query{
			Select: []string{"salesorderid", "statecode", "statuscode"},
			Filter: strings.Join(eqConds("salesorderid", g), " or "),
		}, func(r dataverse.Record) error {
			id, _ := r["salesorderid"].(string)
			orders[strings.ToLower(id)] = salesOrderState{exists: true, statecode: intField(r, "statecode"), statuscode: intField(r, "statuscode")}
			return nil
		})
		if err != nil {
			s.log.Warn("prefetching salesorders; reading them one by one", "error", err)
			return
		}
		invoices := map[string]invoiceInfo{}
		if len(orders) > 0 {
			var withRow []string
			for id := range orders {
				withRow = append(withRow, id)
			}
			err = s.dv.Query(ctx, setInvoices, dataverse.Query{
				Select: []string{"invoiceid", "statecode", "createdon", "_salesorderid_value"},
				// the ids of the order filter: a little longer, still far below 32 KB
				Filter: strings.Join(eqConds("_salesorderid_value", withRow), " or "),
			}, func(r dataverse.Record) error {
				oid, _ := r["_salesorderid_value"].(string)
				oid = strings.ToLower(oid)
				inv := invoiceInfo{id: strings.ToLower(fmt.Sprint(r["invoiceid"])), paid: intField(r, "statecode") == invoiceStatePaid}
				inv.created, _ = r["createdon"].(string)
				if cur, ok := invoices[oid]; !ok || inv.created < cur.created {
					invoices[oid] = inv
				}
				return nil
			})
			if err != nil {
				s.log.Warn("prefetching invoices; reading them one by one", "error", err)
				return
			}
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, id := range g {
			id = strings.ToLower(id)
			p.done[id] = true
			if st, ok := orders[id]; ok {
				p.orders[id] = st
			}
			if inv, ok := invoices[id]; ok {
				p.invoices[id] = inv
			}
		}
	})
	return p
}
