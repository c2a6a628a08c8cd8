package syncer

import (
	"context"
	"fmt"
	"strings"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/state"
)

// ensureInvoice gives a paid order exactly one invoice, set to Paid; converted says
// whether it created the invoice now. Unless the state already knows the invoice is there
// and Paid, Dataverse is asked first (invoices of the order), so a crash after
// ConvertSalesOrderToInvoice and before the state was saved never yields a second invoice.
func (s *orderSyncer) ensureInvoice(ctx context.Context, o *nop.Order, orderID string, rec *state.Record, pre *orderPrefetch) (converted bool, err error) {
	if rec.Extra[extraInvoiceID] != "" && rec.Extra[extraInvoicePaid] == "true" {
		return false, nil
	}
	var inv string
	var paid bool
	if known, ok := pre.invoice(orderID); ok {
		inv, paid = known.id, known.paid
	} else if inv, paid, err = s.findInvoiceState(ctx, orderID); err != nil {
		return false, fmt.Errorf("order %d: %w", o.ID, err)
	}
	if inv == "" {
		if inv, err = s.dv.ConvertSalesOrderToInvoice(ctx, orderID); err != nil {
			return false, fmt.Errorf("order %d: convert salesorder %s to invoice: %w", o.ID, orderID, err)
		}
		converted = true
		rec.Extra[extraInvoiceID] = inv
		// Record the step at once; should this fail or the process die here, the query
		// above finds the invoice next time.
		if err := s.leases.renew(ctx, rec); err != nil {
			return converted, fmt.Errorf("order %d: record invoice %s: %w", o.ID, inv, err)
		}
	}
	rec.Extra[extraInvoiceID] = inv
	if !paid {
		if err := s.payInvoice(ctx, o, inv); err != nil {
			return converted, err
		}
	}
	rec.Extra[extraInvoicePaid] = "true"
	return converted, nil
}

// payInvoice sets the order's invoice to Paid (statecode 2, statuscode 100001 Complete).
func (s *orderSyncer) payInvoice(ctx context.Context, o *nop.Order, inv string) error {
	err := s.dv.Update(ctx, setInvoices, inv, dataverse.Record{"statecode": invoiceStatePaid, "statuscode": invoiceStatusComplete})
	if err != nil {
		return fmt.Errorf("order %d: set invoice %s to paid: %w", o.ID, inv, err)
	}
	return nil
}

// findInvoice returns the id of the order's invoice, "" when it has none.
func (s *orderSyncer) findInvoice(ctx context.Context, orderID string) (string, error) {
	id, _, err := s.findInvoiceState(ctx, orderID)
	return id, err
}

// findInvoiceState returns the order's invoice (the oldest, should there be several) and
// whether it is Paid.
func (s *orderSyncer) findInvoiceState(ctx context.Context, orderID string) (id string, paid bool, err error) {
	var firstCreated string
	err = s.dv.Query(ctx, setInvoices, dataverse.Query{
		Select: []string{"invoiceid", "statecode", "statuscode", "createdon"},
		Filter: "_salesorderid_value eq " + orderID,
	}, func(r dataverse.Record) error {
		rid, _ := r["invoiceid"].(string)
		created, _ := r["createdon"].(string)
		if id == "" || created < firstCreated {
			id, firstCreated = strings.ToLower(rid), created
			paid = intField(r, "statecode") == invoiceStatePaid
		}
		return nil
	})
	if err != nil {
		return "", false, fmt.Errorf("list invoices of salesorder %s: %w", orderID, err)
	}
	return id, paid, nil
}
