package syncer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/nopsync/nopsync/shared/dataverse"
)

// shared holds the Dataverse rows every product and order refers to.
type shared struct {
	CurrencyID        string
	CurrencyPrecision int
	PriceListID       string
	UnitGroupID       string
	BaseUnitID        string

	// The organization's pricing settings, read at start and every sharedRecheck (learn.microsoft.com
	// power-apps/developer/data-platform/reference/entities/organization).
	PricingPrecision int    // pricingdecimalprecision: decimals of a priceperunit
	DiscountPerUnit  bool   // discountcalculationmethod 1: line discounts per unit
	PricingProblem   string // why order totals can't be made exact; "" when they can
}

// precision is what Dataverse keeps of prices and amounts in the store currency.
func (sh *shared) precision() precision {
	p := precisionFor(sh.CurrencyPrecision, sh.PricingPrecision)
	p.perUnit = sh.DiscountPerUnit
	return p
}

// pricingRecheck is how long a pricing problem stays cached before the settings are read
// again, so fixing them in Dynamics 365 takes effect without a restart.
const pricingRecheck = time.Minute

// sharedRecheck is how long the shared rows and the organization's pricing settings are
// used before they are read again: an administrator may change the discount method, the
// pricing precision or system pricing while the app runs, and the order totals the app
// makes exact depend on them. A variable so tests can shorten it.
var sharedRecheck = 5 * time.Minute

// ErrMissingCurrency is wrapped by the bootstrap error when STORE_CURRENCY_CODE has no
// transaction currency in Dynamics 365.
var ErrMissingCurrency = errors.New("store currency missing in Dynamics 365")

// Names of the base unit the app creates with a unit group.
const baseUnitName = "Primary Unit"

// bootstrapper resolves and caches the shared rows and the WhoAmI answer.
type bootstrapper struct {
	dv       Dataverse
	settings Settings

	mu      sync.Mutex // guards boot, bootAt, bootErr and whoAmI
	boot    *shared
	bootAt  time.Time // when boot was resolved
	bootErr error
	once    singleflight.Group
	whoAmI  *dataverse.WhoAmI
}

// rows resolves (and caches) the store currency, the price list and the unit group
// with its base unit, creating the last two when missing. A failure is not cached: the
// next sync tries again, so adding a missing currency takes effect without a restart.
// Customers never need it.
//
// Callers arriving while an attempt runs share its result (a chunk of a thousand orders
// makes one look-up, not a thousand, while the currency is missing).
func (b *bootstrapper) rows(ctx context.Context) (*shared, error) {
	b.mu.Lock()
	sh := b.boot
	if sh != nil && (sh.PricingProblem != "" && time.Since(b.bootAt) > pricingRecheck || time.Since(b.bootAt) > sharedRecheck) {
		sh, b.boot = nil, nil // read the settings again: they may have been fixed, or changed
	}
	b.mu.Unlock()
	if sh != nil {
		return sh, nil
	}
	v, err, _ := b.once.Do("bootstrap", func() (any, error) {
		sh, err := b.resolveShared(ctx)
		b.mu.Lock()
		defer b.mu.Unlock()
		if err != nil {
			b.bootErr = err
			return nil, err
		}
		b.boot, b.bootAt, b.bootErr = sh, time.Now(), nil
		return sh, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*shared), nil
}

func (b *bootstrapper) resolveShared(ctx context.Context) (*shared, error) {
	code := strings.ToUpper(strings.TrimSpace(b.settings.StoreCurrencyCode))
	if code == "" {
		return nil, transient(errors.New("STORE_CURRENCY_CODE is not set: set it to the store's primary currency (ISO 4217)"))
	}
	if err := b.checkWhoAmI(ctx); err != nil {
		return nil, err
	}
	sh := &shared{}
	if err := b.currency(ctx, code, sh); err != nil {
		return nil, err
	}
	if err := b.readPricing(ctx, sh); err != nil {
		return nil, err
	}
	if err := b.priceList(ctx, code, sh); err != nil {
		return nil, err
	}
	ugName, baseName, err := b.unitGroup(ctx, sh)
	if err != nil {
		return nil, err
	}
	if err := b.baseUnit(ctx, ugName, baseName, sh); err != nil {
		return nil, err
	}
	return sh, nil
}

// checkWhoAmI asks Dataverse who the app is, once.
func (b *bootstrapper) checkWhoAmI(ctx context.Context) error {
	if b.whoAmIValue() != nil {
		return nil
	}
	who, err := b.dv.WhoAmI(ctx)
	if err != nil {
		return transient(fmt.Errorf("Dataverse WhoAmI: %w", err))
	}
	b.setWhoAmI(who)
	return nil
}

// currency looks up the store currency (never created or changed) and its precision.
func (b *bootstrapper) currency(ctx context.Context, code string, sh *shared) error {
	var cur dataverse.Record
	err := b.dv.Query(ctx, "transactioncurrencies", dataverse.Query{
		Select: []string{"transactioncurrencyid", "isocurrencycode", "currencyprecision"},
		Filter: "isocurrencycode eq " + odataString(code),
		Top:    1,
	}, func(r dataverse.Record) error {
		if cur == nil {
			cur = r
		}
		return nil
	})
	if err != nil {
		return transient(fmt.Errorf("looking up currency %s in Dynamics 365: %w", code, err))
	}
	if cur == nil {
		return transient(fmt.Errorf("%w: currency %s does not exist in Dynamics 365; add currency %s in Dynamics 365 (Settings > Business Management > Currencies) and products and orders will sync on their next attempt",
			ErrMissingCurrency, code, code))
	}
	sh.CurrencyID = str(cur["transactioncurrencyid"])
	sh.CurrencyPrecision = 2
	if p, ok := intValue(cur["currencyprecision"]); ok {
		sh.CurrencyPrecision = p
	}
	return nil
}

// priceList finds the price list by name or creates it in the store currency with a
// deterministic id, so two instances bootstrapping at once create one row.
func (b *bootstrapper) priceList(ctx context.Context, code string, sh *shared) error {
	plName := b.settings.priceListName()
	pl, err := findOne(ctx, b.dv, "pricelevels", []string{"pricelevelid", "name", "_transactioncurrencyid_value"}, "name eq "+odataString(plName))
	if err != nil {
		return transient(fmt.Errorf("looking up price list %q: %w", plName, err))
	}
	if pl == nil {
		id := deterministicID(0, "pricelevel", strings.ToLower(plName))
		_, err := b.dv.Upsert(ctx, "pricelevels", id, dataverse.Record{
			"name":                             plName,
			"description":                      "Prices of the nopCommerce store (maintained by the sync)",
			"transactioncurrencyid@odata.bind": dataverse.Bind("transactioncurrencies", sh.CurrencyID),
		}, dataverse.Upsert)
		if err != nil {
			// Someone may have created one by that name meanwhile: look again.
			if pl, _ = findOne(ctx, b.dv, "pricelevels", []string{"pricelevelid", "name", "_transactioncurrencyid_value"}, "name eq "+odataString(plName)); pl == nil {
				return transient(fmt.Errorf("creating price list %q: %w", plName, err))
			}
		} else {
			pl = dataverse.Record{"pricelevelid": id, "_transactioncurrencyid_value": sh.CurrencyID}
		}
	}
	sh.PriceListID = str(pl["pricelevelid"])
	if c := str(pl["_transactioncurrencyid_value"]); c != "" && !strings.EqualFold(c, sh.CurrencyID) {
		return transient(fmt.Errorf("price list %q is in another currency than %s: set PRICE_LIST_NAME to a price list in %s, or remove that price list so the app creates one", plName, code, code))
	}
	return nil
}

// unitGroup finds the unit group by name or creates it (deterministic id); it returns the
// group's name and the name of its base unit.
func (b *bootstrapper) unitGroup(ctx context.Context, sh *shared) (ugName, baseName string, err error) {
	ugName = b.settings.unitGroupName()
	ug, err := findOne(ctx, b.dv, "uomschedules", []string{"uomscheduleid", "name", "baseuomname"}, "name eq "+odataString(ugName))
	if err != nil {
		return "", "", transient(fmt.Errorf("looking up unit group %q: %w", ugName, err))
	}
	if ug == nil {
		id := deterministicID(0, "uomschedule", strings.ToLower(ugName))
		_, err := b.dv.Upsert(ctx, "uomschedules", id, dataverse.Record{"name": ugName, "baseuomname": baseUnitName}, dataverse.Upsert)
		if err != nil {
			if ug, _ = findOne(ctx, b.dv, "uomschedules", []string{"uomscheduleid", "name", "baseuomname"}, "name eq "+odataString(ugName)); ug == nil {
				return "", "", transient(fmt.Errorf("creating unit group %q: %w", ugName, err))
			}
		} else {
			ug = dataverse.Record{"uomscheduleid": id, "baseuomname": baseUnitName}
		}
	}
	sh.UnitGroupID = str(ug["uomscheduleid"])
	baseName = str(ug["baseuomname"])
	if baseName == "" {
		baseName = baseUnitName
	}
	return ugName, baseName, nil
}

// baseUnit picks the unit group's base unit: the one flagged as base, else the one by the
// base unit's name, else any; a group without units gets one.
func (b *bootstrapper) baseUnit(ctx context.Context, ugName, baseName string, sh *shared) error {
	var byFlag, byName, any string
	err := b.dv.Query(ctx, "uoms", dataverse.Query{
		Select: []string{"uomid", "name", "isschedulebaseuom", "quantity"},
		Filter: "_uomscheduleid_value eq " + sh.UnitGroupID,
	}, func(r dataverse.Record) error {
		id := str(r["uomid"])
		if base, _ := r["isschedulebaseuom"].(bool); base && byFlag == "" {
			byFlag = id
		}
		if strings.EqualFold(str(r["name"]), baseName) && byName == "" {
			byName = id
		}
		if any == "" {
			any = id
		}
		return nil
	})
	if err != nil {
		return transient(fmt.Errorf("looking up the base unit of unit group %q: %w", ugName, err))
	}
	switch {
	case byFlag != "":
		sh.BaseUnitID = byFlag
	case byName != "":
		sh.BaseUnitID = byName
	case any != "":
		sh.BaseUnitID = any
	default:
		// Dataverse creates the base unit with its group; an environment (or simulator)
		// that did not gets one here.
		id := deterministicID(0, "uom", sh.UnitGroupID)
		if _, err := b.dv.Upsert(ctx, "uoms", id, dataverse.Record{
			"name":                     baseName,
			"quantity":                 1,
			"uomscheduleid@odata.bind": dataverse.Bind("uomschedules", sh.UnitGroupID),
		}, dataverse.Upsert); err != nil {
			return transient(fmt.Errorf("creating base unit %q of unit group %q: %w", baseName, ugName, err))
		}
		sh.BaseUnitID = id
	}
	return nil
}

// readPricing reads the organization's pricing settings into sh and says, in
// sh.PricingProblem, when order totals can't be made exact with them:
//   - pricingdecimalprecision: priceperunit keeps that many decimals (0–4); the app rounds
//     unit prices to it and puts the difference in the line's tax.
//   - discountcalculationmethod: line item (0), price × quantity − discount, or per unit
//     (1), (price − discount) × quantity; the app writes the discount accordingly.
//   - oobpricecalculationenabled: with system pricing off Dataverse computes no amounts
//     (a custom pricing plug-in does, in ways the app can't know).
//
// Sources: learn.microsoft.com power-apps/developer/data-platform/reference/entities/
// organization; dynamics365/sales/configure-product-catalog-information (system settings).
func (b *bootstrapper) readPricing(ctx context.Context, sh *shared) error {
	var org dataverse.Record
	err := b.dv.Query(ctx, "organizations", dataverse.Query{
		Select: []string{"organizationid", "pricingdecimalprecision", "discountcalculationmethod", "oobpricecalculationenabled"},
		Top:    1,
	}, func(r dataverse.Record) error {
		if org == nil {
			org = r
		}
		return nil
	})
	if err != nil {
		return transient(fmt.Errorf("reading the organization's pricing settings: %w", err))
	}
	sh.PricingPrecision = defaultPricingPrecision
	if org == nil {
		sh.PricingProblem = "the organization's pricing settings could not be read (no organization row answered)"
		return nil
	}
	if p, ok := intValue(org["pricingdecimalprecision"]); ok {
		sh.PricingPrecision = p
	}
	method, _ := intValue(org["discountcalculationmethod"])
	sh.DiscountPerUnit = method == 1
	var problems []string
	if on, ok := org["oobpricecalculationenabled"].(bool); ok && !on {
		problems = append(problems, "system pricing is off (oobpricecalculationenabled): Dynamics 365 computes no order totals, so the app can't make them equal the store's; turn on \"Use system pricing calculation\" (Settings > Administration > System Settings > Sales)")
	}
	if sh.PricingPrecision < 0 || sh.PricingPrecision > 4 {
		problems = append(problems, fmt.Sprintf("pricing decimal precision %d is outside 0–4; set \"Pricing decimal precision\" (System Settings > General) to 0–4", sh.PricingPrecision))
	}
	if method != 0 && method != 1 {
		problems = append(problems, fmt.Sprintf("discount calculation method %d is neither line item (0) nor per unit (1); set \"Discount calculation method\" (System Settings > Sales)", method))
	}
	if len(problems) > 0 {
		sh.PricingProblem = "order totals can't be made exact: " + strings.Join(problems, "; ") + "; orders are recorded failed until then"
	}
	return nil
}

// findOne returns the first row of set matching filter, or nil.
func findOne(ctx context.Context, dv Dataverse, set string, cols []string, filter string) (dataverse.Record, error) {
	var found dataverse.Record
	err := dv.Query(ctx, set, dataverse.Query{Select: cols, Filter: filter, Top: 1}, func(r dataverse.Record) error {
		if found == nil {
			found = r
		}
		return nil
	})
	return found, err
}

func (b *bootstrapper) whoAmIValue() *dataverse.WhoAmI {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.whoAmI
}

func (b *bootstrapper) setWhoAmI(w dataverse.WhoAmI) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.whoAmI = &w
}

// ConnectionInfo is what the status page shows about Dynamics 365.
type ConnectionInfo struct {
	Reachable      bool   `json:"reachable"`
	OrganizationID string `json:"organizationId,omitempty"`
	BusinessUnitID string `json:"businessUnitId,omitempty"`
	UserID         string `json:"userId,omitempty"`
	Currency       string `json:"currency"`
	Error          string `json:"error,omitempty"` // "" when everything needed to sync is there
}

// Connection checks Dynamics 365 now: WhoAmI, then the shared rows (bootstrap). A
// missing currency shows here with what to do.
func (e *Engine) Connection(ctx context.Context) ConnectionInfo {
	info := ConnectionInfo{Currency: strings.ToUpper(e.settings.StoreCurrencyCode)}
	who, err := e.dv.WhoAmI(ctx)
	if err != nil {
		info.Error = err.Error()
		return info
	}
	e.boot.setWhoAmI(who)
	info.Reachable = true
	info.OrganizationID, info.BusinessUnitID, info.UserID = who.OrganizationID, who.BusinessUnitID, who.UserID
	var problems []string
	if sh, err := e.boot.rows(ctx); err != nil {
		problems = append(problems, err.Error())
	} else if sh.PricingProblem != "" {
		problems = append(problems, sh.PricingProblem)
	}
	if s := e.setup.String(); s != "" {
		problems = append(problems, s)
	}
	info.Error = strings.Join(problems, "; ")
	return info
}

// odataString quotes s as an OData string literal.
func odataString(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// str reads a string column ("" for null or absent).
func str(v any) string {
	s, _ := v.(string)
	return s
}

// intValue reads a number column.
func intValue(v any) (int, bool) {
	switch n := v.(type) {
	case float64:
		return int(n), true
	case int:
		return n, true
	case int64:
		return int(n), true
	case interface{ Int64() (int64, error) }:
		i, err := n.Int64()
		return int(i), err == nil
	}
	return 0, false
}
