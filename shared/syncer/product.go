package syncer

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	neturl "net/url"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/internal/cut"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/pictures"
	"github.com/nopsync/nopsync/shared/state"
)

// Product states (statecode) and their statuses.
const (
	productActive        = 0 // status 1
	productRetired       = 1 // status 2
	productDraft         = 2 // status 0
	productUnderRevision = 3 // status 3
)

// productstructure values: a product, a product family.
const (
	productStructureProduct = 1
	productStructureFamily  = 2
)

// Dataverse error codes the product lifecycle reacts to.
const (
	codeProductNumberExists    = "0x80043b06"
	codeOnlyUpdatedInDraft     = "0x8004f995"
	codeChildOfNonActiveFamily = "0x8004f909"
	codeDuplicateProductPrice  = "0x80043b08"
	// A product in a price list can't be retired (CannotRetireProductFromActiveBundle), nor
	// a family one of whose children can't be (ProductHasUnretiredChild).
	codeCannotRetireInPriceList  = "0x8004f997"
	codeProductHasUnretiredChild = "0x8004f910"
)

// keptActiveNote is the reason recorded for a product of a family the store unpublished.
const keptActiveNote = "unpublished in nopCommerce, kept Active: Dynamics 365 can't re-activate a retired family"

// keptFamilyNote is the reason recorded for a grouped product turned simple in the store
// whose row is a product family in Dynamics 365 (keepFamily).
const keptFamilyNote = "turned into a simple product in nopCommerce; kept a product family in Dynamics 365, without a price list item: " +
	"only a product family can be the parent of its products there, and a product's parent can't be changed"

// Extra keys the product syncer keeps.
const (
	extraProductNumber = "productNumber" // the productnumber written
	extraParentID      = "parentId"      // the family row set as parentproductid
	extraPriceItemID   = "priceListItem" // the productpricelevel row
	extraPriceAmount   = "priceAmount"   // the amount last written to the price list item
	extraImageURL      = "imageUrl"      // the picture copied to entityimage
	extraImageError    = "imageError"    // why the last picture could not be copied
	extraFamilyStub    = "familyStub"    // "true": row created for a child before the family's own event
	extraKeptFamily    = "keptFamily"    // "true": a simple product in the store kept a product family (keepFamily)
	extraAdoptedNumber = "adoptedProduct"
	productNumberKind  = "product-number" // state doc: lower(productnumber) → "<storeID>/<productID>" that owns it
)

type productSyncer struct {
	*deps
	http     *http.Client // fetches pictures
	ensuring sync.Map     // "product/<id>" → *sync.Mutex: one ensureProduct per product at a time
}

func (s *productSyncer) sync(ctx context.Context, ev *nop.Event, rec *state.Record) (outcome, error) {
	p := ev.Product
	if p == nil {
		return outcome{}, permanent(fmt.Errorf("event %s: product data missing", ev.ID))
	}
	sh, err := s.boot.rows(ctx)
	if err != nil {
		return outcome{}, err
	}
	if p.Deleted {
		return s.deleteProduct(ctx, ev.StoreID, p, rec)
	}
	plan, err := s.planProduct(ctx, ev.StoreID, p, rec, sh, nil)
	if err != nil {
		return outcome{}, err
	}
	if plan.unchanged {
		return plan.outcome(), nil
	}
	if err := s.applyProduct(ctx, plan, rec, sh); err != nil {
		return outcome{}, err
	}
	return plan.outcome(), nil
}

// productPlan is one product write, worked out before it is sent.
type productPlan struct {
	storeID   int
	p         *nop.Product
	id        string
	number    string // productnumber to write
	fields    dataverse.Record
	parentID  string // family row ("" for none)
	setParent bool
	family    bool
	active    bool   // wanted lifecycle: Active (true) or Retired
	final     bool   // the row is retired for good: nothing was written (applyProduct)
	priceItem string // the price list item known from the state ("" when none)
	hash      string
	unchanged bool
	note      string
	extra     map[string]string
	image     string // base64 picture to send ("" for none)
	picture   string // picture URL still to fetch (right before the write)
	// foundMade: the state knew no row, and the product's own row (its deterministic id)
	// is already in Dynamics 365, published once (Active, Retired or Under Revision): not
	// a Draft an interrupted first write left.
	foundMade bool
	// becameFamily: the row is a product in Dynamics 365 and the store made it a grouped
	// product; its price list items go even when the state does not know them (dropPriceItem).
	becameFamily bool
}

func (pl *productPlan) outcome() outcome {
	if pl.final {
		return outcome{status: state.Skipped, reason: pl.note, dataverseID: pl.id, hash: pl.hash}
	}
	return outcome{status: state.Synced, reason: pl.note, dataverseID: pl.id, hash: pl.hash}
}

func (pl *productPlan) record() dataverse.Record {
	r := make(dataverse.Record, len(pl.fields)+3)
	for k, v := range pl.fields {
		r[k] = v
	}
	r["productnumber"] = pl.number
	if pl.setParent && pl.parentID != "" {
		r["parentproductid@odata.bind"] = dataverse.Bind("products", pl.parentID)
	}
	if pl.image != "" {
		r["entityimage"] = pl.image
	}
	return r
}

// maxProductNumber is the length of a product's productnumber (product table reference).
const maxProductNumber = 100

// productNumber is the number the app would write: the sku, else NOP-<id>. A sku longer
// than a product number is not cut (cut, it could be another product's sku, or match a
// row it is not): the product gets NOP-<id> (skuTooLong says why).
func productNumber(storeID, id int, sku *string) string {
	if s := strings.TrimSpace(deref(sku)); s != "" && utf8.RuneCountInString(s) <= maxProductNumber {
		return s
	}
	return fallbackNumber(storeID, id)
}

// skuTooLong is the note of a product whose sku is longer than a product number, or "".
func skuTooLong(storeID, id int, sku *string) string {
	if n := utf8.RuneCountInString(strings.TrimSpace(deref(sku))); n > maxProductNumber {
		return fmt.Sprintf("sku is %d characters, over the %d a product number holds; wrote product number %s instead", n, maxProductNumber, fallbackNumber(storeID, id))
	}
	return ""
}

// fallbackNumber is the product number of a product without a usable sku: NOP-<id>
// (docs/dataverse-mapping.md), and NOP-<store>-<id> for a store other than the default
// one, as product numbers are unique across the whole Dataverse and a second store's
// products have the same ids as the first's.
func fallbackNumber(storeID, id int) string {
	if storeID > 1 {
		return "NOP-" + strconv.Itoa(storeID) + "-" + strconv.Itoa(id)
	}
	return "NOP-" + strconv.Itoa(id)
}

// isFallbackFor reports whether number is a fallback number of product id, of any store.
func isFallbackFor(number string, id int) bool {
	rest, ok := strings.CutPrefix(number, "NOP-")
	if !ok {
		return false
	}
	if _, after, found := strings.Cut(rest, "-"); found {
		rest = after
	}
	return rest == strconv.Itoa(id)
}

// maxQuantityOnHand is the largest quantityonhand Dataverse takes (product table
// reference: QuantityOnHand, MaxValue 1000000000); stores that don't track stock often
// hold int32's largest value.
const maxQuantityOnHand = 1_000_000_000

// productFields maps the columns of a product (docs/dataverse-mapping.md).
func productFields(p *nop.Product, sh *shared) dataverse.Record {
	prec := sh.precision()
	structure := productStructureProduct
	if p.ProductType == nop.ProductTypeGrouped {
		structure = productStructureFamily
	}
	qty := min(max(p.StockQuantity, 0), maxQuantityOnHand)
	return dataverse.Record{
		"name":                             cut.Runes(strings.TrimSpace(p.Name), 100),
		"description":                      orNull(deref(p.ShortDescription), 2000),
		"price":                            moneyValue(p.Price, prec.price),
		"currentcost":                      moneyValue(p.ProductCost, prec.amount),
		"quantityonhand":                   qty,
		"productstructure":                 structure,
		"quantitydecimal":                  0,
		"defaultuomscheduleid@odata.bind":  dataverse.Bind("uomschedules", sh.UnitGroupID),
		"defaultuomid@odata.bind":          dataverse.Bind("uoms", sh.BaseUnitID),
		"pricelevelid@odata.bind":          dataverse.Bind("pricelevels", sh.PriceListID),
		"transactioncurrencyid@odata.bind": dataverse.Bind("transactioncurrencies", sh.CurrencyID),
	}
}

// planProduct works out the product write: row (state, our own row, adoption by product
// number), product number (sku unless another product holds it), family, picture.
// pre (bulk path) holds rows looked up for a whole chunk; nil looks up per product.
func (s *productSyncer) planProduct(ctx context.Context, storeID int, p *nop.Product, rec *state.Record, sh *shared, pre *productPrefetch) (*productPlan, error) {
	pl := &productPlan{storeID: storeID, p: p, fields: productFields(p, sh), extra: map[string]string{},
		family: p.ProductType == nop.ProductTypeGrouped, active: p.Published && !p.Deleted,
		priceItem: rec.Extra[extraPriceItemID]}
	activeTag := strconv.FormatBool(pl.active)
	if pl.family {
		pl.extra[extraKeptFamily] = ""
	}
	// The product's own row when the state names none (never written, or the state was
	// lost): whether it exists, its state, and the family Dynamics 365 holds it in, which
	// the state would otherwise say (extraParentID) and which can't change.
	own := deterministicID(storeID, "product", strconv.Itoa(p.ID))
	var ownInfo productRowInfo
	knownParent := rec.Extra[extraParentID]
	if rec.DataverseID == "" {
		var err error
		if ownInfo, err = s.ownRow(ctx, own, pre); err != nil {
			return nil, err
		}
		if knownParent == "" {
			knownParent = ownInfo.parent
		}
	}
	// In a family: a grouped product, a product the store puts in one, or one Dynamics 365
	// holds in one (its parent can't be taken away once set).
	inFamily := pl.family || p.ParentGroupedProductID > 0 || knownParent != ""
	keptActive := false
	if !pl.active && !p.Deleted && inFamily {
		// Products of a family are retired only when deleted: a retired family, or a
		// retired child of one, can never be Active again in Dynamics 365.
		pl.active, keptActive, activeTag = true, true, "kept"
	}
	pl.note = joinNote(pl.note, skuTooLong(storeID, p.ID, p.Sku))
	if p.StockQuantity > maxQuantityOnHand {
		pl.note = joinNote(pl.note, fmt.Sprintf("stock quantity %d is more than Dynamics 365 takes: wrote %d", p.StockQuantity, maxQuantityOnHand))
	}
	want := productNumber(storeID, p.ID, p.Sku)
	if isFallbackFor(want, p.ID) && isFallbackFor(rec.Extra[extraProductNumber], p.ID) {
		// Without a usable sku the product keeps the number it was written with, whichever
		// storeId this event carries (nopCommerce shares products between the stores of an
		// install): not a new number, and a new write, at every other store's event.
		want = rec.Extra[extraProductNumber]
	}
	pictureURL := ""
	if s.settings.SyncImages && len(p.PictureURLs) > 0 {
		pictureURL = p.PictureURLs[0]
	}
	pl.hash = hashOf(pl.fields, "number="+want, "parent="+strconv.Itoa(p.ParentGroupedProductID),
		"active="+activeTag, "picture="+pictureURL)
	if rec.Status == state.Synced && rec.DataHash == pl.hash && rec.DataverseID != "" {
		pl.id, pl.unchanged, pl.note = rec.DataverseID, true, rec.Reason
		return pl, nil
	}

	pl.id = rec.DataverseID
	pl.number = want
	if pl.id == "" {
		if ownInfo.exists {
			pl.id, pl.foundMade = own, ownInfo.state != productDraft
		} else if err := s.adoptProduct(ctx, pl, own, pre); err != nil {
			return nil, err
		}
	} else if rec.Extra[extraProductNumber] != want {
		// The sku changed (or was never written): may another product hold it?
		owner, err := s.numberOwner(ctx, want)
		if err != nil {
			return nil, err
		}
		if owner != "" && owner != ownerKey(storeID, p.ID) {
			pl.useFallback(want)
		}
	} else {
		pl.number = rec.Extra[extraProductNumber]
	}
	if pre != nil {
		if row, exists := pre.rows[pl.id]; exists {
			if err := s.settleStructure(ctx, pl, rec, row.family); err != nil {
				return nil, err
			}
		}
	}

	switch {
	case p.ParentGroupedProductID <= 0 || p.ParentGroupedProductID == p.ID:
	case knownParent != "":
		// In a family already, for good (Sales developer guide, product families: a
		// product's parent can't change): the store's family only tells whether it moved.
		// Nothing is made for it, nor waited for.
		fam, err := s.familyRowOf(ctx, p.ParentGroupedProductID, pre)
		if err != nil {
			return nil, err
		}
		pl.parentID, pl.setParent = knownParent, false
		if fam == "" && rec.Extra[extraParentID] == "" {
			// After a lost state, with no record of the store's family: its row would have
			// the app's id, unless it was adopted by its sku (not the app's id: nothing
			// tells, so no note) or written from another store's event (the note then says
			// moved, wrongly).
			if own := deterministicID(storeID, "product", strconv.Itoa(p.ParentGroupedProductID)); madeByTheApp(knownParent) {
				fam = own
			} else {
				fam = knownParent
			}
		}
		// With the state intact the product's own family has a record naming its row: a
		// family with none is another.
		if !strings.EqualFold(fam, knownParent) {
			pl.note = joinNote(pl.note, "moved to another grouped product in nopCommerce; kept in its first product family: Dynamics 365 can't change a product's parent")
		}
	default:
		fam, err := s.joinFamily(ctx, storeID, p.ParentGroupedProductID, p.ID, sh, pre)
		if err != nil {
			return nil, err
		}
		switch {
		case fam.notFamily:
			// docs/dataverse-mapping.md: the parent is set "when that is a grouped
			// product"; only a family can be a parent in Dynamics 365.
			pl.note = joinNote(pl.note, fmt.Sprintf("its parentGroupedProductId %d is not a grouped product: written without a product family", p.ParentGroupedProductID))
		case fam.why != "":
			pl.note = joinNote(pl.note, fmt.Sprintf("its grouped product %d %s: written without a product family", p.ParentGroupedProductID, fam.why))
		}
		if fam.id == "" && keptActive && !pl.family {
			// Without a parent it can be retired and re-activated like any product.
			pl.active, keptActive = false, false
		}
		pl.parentID, pl.setParent = fam.id, fam.id != ""
	}

	if old := knownParent; old != "" && (p.ParentGroupedProductID <= 0 || p.ParentGroupedProductID == p.ID) {
		// Taken out of its grouped product in the store: Dynamics 365 can't take a
		// product's parent away, so the row stays in its family (and is never retired
		// when merely unpublished, above).
		pl.parentID = old
		pl.note = joinNote(pl.note, "taken out of its grouped product in nopCommerce; kept in its product family: Dynamics 365 can't change a product's parent")
	}

	if keptActive {
		pl.note = joinNote(keptActiveNote, pl.note)
	}
	if pictureURL != "" && rec.Extra[extraImageURL] != pictures.Shown(pictureURL) {
		// Fetched right before the write, so a chunk never holds all its pictures.
		pl.picture = pictureURL
	}
	return pl, nil
}

// familyJoin is the family a product joins now: its row, or why none (why), or that the
// store's parent is not a grouped product (notFamily).
type familyJoin struct {
	id        string
	why       string
	notFamily bool
}

// joinFamily decides the family of a product that has none yet in Dynamics 365 and whose
// store parent is familyID: a family written in this chunk; none when the family was
// deleted in the store (in this chunk: a chunk applies its deletes first and writes their
// records when it ends; or before it reached Dynamics 365); else its row (made as a stub
// when the family's own event has not come), unless that row is retired (for good: a
// retired family can't be re-activated, Sales developer guide, product lifecycle) or gone,
// where the product could never be published nor sold: its parent can't change later.
func (s *productSyncer) joinFamily(ctx context.Context, storeID, familyID, productID int, sh *shared, pre *productPrefetch) (familyJoin, error) {
	if pre != nil {
		if fam := pre.families[familyID]; fam != "" {
			return familyJoin{id: fam}, nil
		}
		if pre.deleted[familyID] {
			return familyJoin{why: "was deleted in nopCommerce"}, nil
		}
	}
	fam, verify, err := s.ensureFamily(ctx, storeID, familyID, productID, sh)
	switch {
	case errors.Is(err, errFamilyDeleted):
		return familyJoin{why: "was deleted in nopCommerce before it reached Dynamics 365"}, nil
	case err != nil:
		return familyJoin{}, err
	case fam == "":
		return familyJoin{notFamily: true}, nil
	case !verify:
		return familyJoin{id: fam}, nil
	}
	why, err := s.familyUnusable(ctx, fam, pre)
	if err != nil || why != "" {
		return familyJoin{why: why}, err
	}
	return familyJoin{id: fam}, nil
}

// familyRowOf is the row the store's family familyID has in Dynamics 365 as far as the app
// knows, without making or waiting for anything: the row this chunk wrote, or the one its
// record names; "" when neither names one (never written, or the state was lost: the app's
// own id would be a guess, wrong for a family adopted by its sku or written from another
// store's event).
func (s *productSyncer) familyRowOf(ctx context.Context, familyID int, pre *productPrefetch) (string, error) {
	if pre != nil {
		if fam := pre.families[familyID]; fam != "" {
			return fam, nil
		}
	}
	rec, err := s.st.Get(ctx, state.Product, strconv.Itoa(familyID))
	switch {
	case err == nil:
		return rec.DataverseID, nil
	case errors.Is(err, state.ErrNotFound):
		return "", nil
	}
	return "", transient(fmt.Errorf("reading product %d state: %w", familyID, err))
}

// familyUnusable tells why the family row fam can't take a new product ("" when it can):
// retired, or gone. A chunk looked its families up with its products (after its deletes);
// one by one the row is read.
func (s *productSyncer) familyUnusable(ctx context.Context, fam string, pre *productPrefetch) (string, error) {
	var row productRowInfo
	switch {
	case pre != nil && pre.looked[fam]:
		row = pre.rows[fam]
	case pre != nil:
		// A family row other than the one the look-up took (adopted by its sku, or
		// written from another store's event): read once per chunk.
		var err error
		if row, err = pre.familyRow(fam, func() (productRowInfo, error) { return s.productLifecycle(ctx, fam) }); err != nil {
			return "", fmt.Errorf("reading the product family of a product: %w", err)
		}
	default:
		var err error
		if row, err = s.productLifecycle(ctx, fam); err != nil {
			return "", fmt.Errorf("reading the product family of a product: %w", err)
		}
	}
	switch {
	case !row.exists:
		return "is no longer in Dynamics 365", nil
	case row.state == productRetired:
		return "is a product family retired in Dynamics 365, for good (a retired family can't be re-activated)", nil
	}
	return "", nil
}

// fetchPicture downloads the plan's picture, if any; a failure is recorded, not fatal.
func (s *productSyncer) fetchPicture(ctx context.Context, pl *productPlan) {
	if pl.picture == "" {
		return
	}
	img, err := s.fetchImage(ctx, pl.picture)
	if err != nil {
		pl.extra[extraImageError] = cut.Runes(err.Error(), 300)
	} else {
		pl.image = img
		pl.extra[extraImageURL] = pictures.Shown(pl.picture)
		pl.extra[extraImageError] = ""
	}
	pl.picture = ""
}

// settleStructure decides what a row that exists in Dynamics 365 becomes when the store
// changed the product's type. A product family turned simple in the store (productType 10
// → 5; nopCommerce's admin ProductController.Edit then takes its associated products out
// of it, each with its own event) stays a family while it holds products (keepFamily);
// one that holds none becomes a plain product, sellable with its price list item. A
// product the store made grouped loses its price list items (becameFamily). Asked only
// when the row's structure and the event's type disagree: a query per type change, and
// per changed event of a family kept so (its products may have been deleted since).
func (s *productSyncer) settleStructure(ctx context.Context, pl *productPlan, rec *state.Record, rowIsFamily bool) error {
	switch {
	case rowIsFamily && !pl.family:
		keep, err := s.hasChildProducts(ctx, pl.id)
		if err != nil {
			return err
		}
		if keep {
			pl.keepFamily()
		} else {
			pl.extra[extraKeptFamily] = "" // a product now: no family for a product to join
		}
	case !rowIsFamily && pl.family:
		pl.becameFamily = true
	}
	return nil
}

// keepFamily keeps a row that is a product family in Dynamics 365, and holds products, a
// family when the store made the product simple. Dynamics 365 lets only a product family
// be the parent of a product (Sales developer guide, product families) and never changes a
// product's parent, so the products it holds stay under this row; whether it takes a
// change of productstructure on update is not documented, and refused after the revise it
// would leave the family and its products Under Revision. Kept, it is written, published
// with its hierarchy (its revised products with it) and never retired when unpublished, as
// any family; it gets no price list item, the app writing those for products only.
func (pl *productPlan) keepFamily() {
	if pl.family {
		return
	}
	pl.family = true
	pl.fields["productstructure"] = productStructureFamily
	pl.extra[extraKeptFamily] = "true"
	pl.note = joinNote(pl.note, keptFamilyNote)
	if !pl.active && !pl.p.Deleted {
		pl.active = true
		pl.note = joinNote(keptActiveNote, pl.note)
	}
}

func (pl *productPlan) useFallback(want string) {
	pl.number = fallbackNumber(pl.storeID, pl.p.ID)
	pl.note = fmt.Sprintf("sku %q is the product number of another product in Dynamics 365; wrote product number %s instead", want, pl.number)
}

func ownerKey(storeID, productID int) string {
	return strconv.Itoa(storeID) + "/" + strconv.Itoa(productID)
}

// ownRow reads the product row own (read ahead in pre for a chunk): whether it exists,
// its state and its parent family.
func (s *productSyncer) ownRow(ctx context.Context, own string, pre *productPrefetch) (productRowInfo, error) {
	if pre != nil {
		return pre.rows[own], nil
	}
	return s.productLifecycle(ctx, own)
}

// adoptProduct handles a product with no row of ours: a product whose productnumber is
// the one we would write is adopted, unless another store product already owns it (then
// NOP-<id> is written instead).
func (s *productSyncer) adoptProduct(ctx context.Context, pl *productPlan, own string, pre *productPrefetch) error {
	want := pl.number
	var found dataverse.Record
	if pre != nil {
		found = pre.byNumber[strings.ToLower(want)]
	} else {
		var err error
		found, err = findOne(ctx, s.dv, "products", []string{"productid", "productnumber"}, "productnumber eq "+odataString(want))
		if err != nil {
			return fmt.Errorf("looking up product number %q: %w", want, err)
		}
	}
	if found == nil {
		pl.id = own
		return nil
	}
	owner, err := s.numberOwner(ctx, want)
	if err != nil {
		return err
	}
	foundID := strings.ToLower(str(found["productid"]))
	// With no claim on record (the sync state was lost), a row the app made is another
	// store product's: adopting it would make the two share one row.
	if owner == ownerKey(pl.storeID, pl.p.ID) || owner == "" && !madeByTheApp(foundID) {
		pl.id = foundID
		pl.extra[extraAdoptedNumber] = pl.id
		pl.note = "adopted the existing product with product number " + want
		return nil
	}
	pl.id = own
	pl.useFallback(want)
	return nil
}

func (s *productSyncer) numberOwner(ctx context.Context, number string) (string, error) {
	doc, err := s.st.GetDoc(ctx, productNumberKind, numberKey(number))
	switch {
	case err == nil:
		return string(doc.Value), nil
	case errors.Is(err, state.ErrNotFound):
		return "", nil
	}
	return "", transient(fmt.Errorf("reading product number owners: %w", err))
}

// numberKey is the key of a product number's claim: the number in lower case (Dataverse
// compares product numbers without regard to case), hashed when longer than the state
// store's keys (a number of 100 non-ASCII characters).
func numberKey(number string) string { return state.FitKey(strings.ToLower(number)) }

// numberClaim is the doc that records a product number's owner, or nil for a number the
// app made itself (NOP-<id>), which no other product can hold.
func numberClaim(storeID, productID int, number string) *state.Doc {
	if strings.HasPrefix(number, "NOP-") {
		return nil
	}
	return &state.Doc{Kind: productNumberKind, Key: numberKey(number), Value: []byte(ownerKey(storeID, productID))}
}

// claimNumbers records the owners of product numbers (claims[i] made by recordProduct for
// recs[i]), in one call to the state store (one transaction per hundred in Table
// Storage). A number already claimed keeps its first owner. A claim that could not be
// written is logged and its record forgets the number it wrote, so the next write of
// the product asks who owns it and claims it again; meanwhile Dynamics 365 itself
// refuses a second product with that number (writeProduct falls back to NOP-<id>).
func (s *productSyncer) claimNumbers(ctx context.Context, claims []*state.Doc, recs []*state.Record) {
	if len(claims) == 0 {
		return
	}
	for i, err := range s.st.SaveDocs(ctx, claims) {
		if errors.Is(err, state.ErrConflict) {
			err = s.takeReleasedNumber(ctx, claims[i])
		}
		if err != nil && !errors.Is(err, state.ErrConflict) {
			s.log.Warn("recording product number owner", "number", claims[i].Key, "error", err)
			delete(recs[i].Extra, extraProductNumber)
		}
	}
}

// takeReleasedNumber claims a product number whose claim a deleted product released
// (releaseNumber: the claim doc stays, with no owner); a claim with an owner keeps it
// (ErrConflict).
func (s *productSyncer) takeReleasedNumber(ctx context.Context, claim *state.Doc) error {
	doc, err := s.st.GetDoc(ctx, claim.Kind, claim.Key)
	if err != nil {
		return err
	}
	if len(doc.Value) != 0 {
		return state.ErrConflict
	}
	doc.Value = claim.Value
	return s.st.SaveDoc(ctx, doc)
}

// releaseNumber gives up the claim of product productID on the product number it wrote,
// once its row was deleted: the number is then free in Dynamics 365, and a product with
// that sku (in the same import array, whose deletes go first, or later) writes it rather
// than NOP-<id>. The state store keeps docs for good, so the claim stays with no owner.
// A failure is logged: the number then stays claimed, and such a product gets NOP-<id>.
func (s *productSyncer) releaseNumber(ctx context.Context, storeID, productID int, number string) {
	claim := numberClaim(storeID, productID, number)
	if claim == nil {
		return
	}
	// The owner's store may differ: nopCommerce shares a product between the stores of
	// an install, and its events carry the storeId of the store they came from.
	doc, err := s.st.GetDoc(ctx, claim.Kind, claim.Key)
	if err == nil && strings.HasSuffix(string(doc.Value), "/"+strconv.Itoa(productID)) {
		doc.Value = nil
		err = s.st.SaveDoc(ctx, doc)
	}
	if err != nil && !errors.Is(err, state.ErrNotFound) {
		s.log.Warn("releasing the product number of a deleted product", "number", claim.Key, "error", err)
	}
}

// applyProduct writes a planned product, its price list item and its lifecycle state.
func (s *productSyncer) applyProduct(ctx context.Context, pl *productPlan, rec *state.Record, sh *shared) error {
	s.fetchPicture(ctx, pl)
	defer func() { pl.image = "" }() // don't keep the picture in memory after its write
	row, err := s.productLifecycle(ctx, pl.id)
	if err != nil {
		return err
	}
	cur, exists := row.state, row.exists
	if exists {
		if err := s.settleStructure(ctx, pl, rec, row.family); err != nil {
			return err
		}
	}
	if exists && cur == productRetired {
		// A retired product can't be edited: re-activate it first (retire again below
		// if that is what the store says). A retired family, or a retired product of
		// one, can never be Active again (docs/dataverse-mapping.md: Retired is then
		// final): the change is skipped with the reason, not failed on Dataverse's refusal.
		if row.retiredForGood() {
			note, err := s.retiredNote(ctx, row)
			if err != nil {
				return err
			}
			pl.final = true
			pl.note = joinNote(pl.note, note)
			// Dynamics 365 retires only products in no price list: its item is gone.
			delete(rec.Extra, extraPriceItemID)
			delete(rec.Extra, extraPriceAmount)
			return nil
		}
		if err := s.setProductState(ctx, pl.id, productActive); err != nil {
			return err
		}
		cur = productActive
	}
	if err := s.writeProduct(ctx, pl, exists, &cur); err != nil {
		return err
	}
	if !exists {
		if cur, _, err = s.productState(ctx, pl.id); err != nil {
			return err
		}
	}
	if pl.family {
		if err := s.dropPriceItem(ctx, pl, sh); err != nil {
			return err
		}
	} else if pl.active {
		if err := s.writePriceItem(ctx, pl, rec, sh); err != nil {
			return err
		}
	}
	if err := s.settleLifecycle(ctx, pl, cur); err != nil {
		return err
	}
	if claim := s.recordProduct(pl, rec); claim != nil {
		s.claimNumbers(ctx, []*state.Doc{claim}, []*state.Record{rec})
	}
	return nil
}

// recordProduct keeps what was written in the product's state; it returns the claim of
// its number still to be recorded (claimNumbers), or nil.
func (s *productSyncer) recordProduct(pl *productPlan, rec *state.Record) *state.Doc {
	if rec.Extra == nil {
		rec.Extra = map[string]string{}
	}
	for k, v := range pl.extra {
		if v == "" {
			delete(rec.Extra, k)
		} else {
			rec.Extra[k] = v
		}
	}
	claimed := rec.Extra[extraProductNumber] == pl.number && rec.DataverseID != ""
	rec.Extra[extraProductNumber] = pl.number
	delete(rec.Extra, extraFamilyStub)
	if pl.parentID != "" {
		rec.Extra[extraParentID] = pl.parentID
	}
	if claimed {
		return nil
	}
	return numberClaim(pl.storeID, pl.p.ID, pl.number)
}

// writeProduct upserts the row. A product number held by another product falls back to
// NOP-<id>; an Active product Dataverse won't edit in place is revised, updated and
// (by settleLifecycle) published again.
func (s *productSyncer) writeProduct(ctx context.Context, pl *productPlan, exists bool, cur *int) error {
	// numberTaken: Dynamics 365 refused the product number (another row holds it): write
	// NOP-<id> instead, once.
	numberTaken := func(err error) bool {
		if err != nil && hasCode(err, codeProductNumberExists) && pl.number != fallbackNumber(pl.storeID, pl.p.ID) {
			pl.useFallback(pl.number)
			return true
		}
		return false
	}
	_, err := s.dv.Upsert(ctx, "products", pl.id, pl.record(), dataverse.Upsert)
	if numberTaken(err) {
		_, err = s.dv.Upsert(ctx, "products", pl.id, pl.record(), dataverse.Upsert)
	}
	// The row exists and is Active (or Retired): revise it, then update it. exists may
	// be stale when someone else created the row a moment ago. Publishing the product's
	// family publishes it too (PublishProductHierarchy takes revised children along), so a
	// family published by another writer between the two steps makes the update fail
	// again: revise once more.
	for attempt := 0; err != nil && hasCode(err, codeOnlyUpdatedInDraft) && attempt < 3; attempt++ {
		if st, ok, rerr := s.productState(ctx, pl.id); rerr == nil && ok && st == productRetired {
			if serr := s.setProductState(ctx, pl.id, productActive); serr != nil {
				return serr
			}
		}
		if serr := s.setProductState(ctx, pl.id, productUnderRevision); serr != nil {
			return serr
		}
		*cur = productUnderRevision
		err = s.dv.Update(ctx, "products", pl.id, pl.record())
		// An Active row's new number is checked only now, after the revise.
		if numberTaken(err) {
			err = s.dv.Update(ctx, "products", pl.id, pl.record())
		}
	}
	if err != nil && hasCode(err, codeOnlyUpdatedInDraft) {
		return transient(fmt.Errorf("writing product %s: published again by another writer each time it was revised: %w", pl.id, err))
	}
	if err != nil {
		return fmt.Errorf("writing product %s: %w", pl.id, err)
	}
	return nil
}

// settleLifecycle moves the product to Active (published) or Retired, whatever state the
// environment left it in.
func (s *productSyncer) settleLifecycle(ctx context.Context, pl *productPlan, cur int) error {
	if cur == productDraft || cur == productUnderRevision {
		published, err := s.publish(ctx, pl, cur)
		if err != nil {
			return err
		}
		if !published {
			return nil
		}
		cur = productActive
	}
	if !pl.active && cur == productActive {
		return s.retire(ctx, pl)
	}
	if pl.active && cur == productRetired {
		return s.setProductState(ctx, pl.id, productActive)
	}
	return nil
}

// publish makes a Draft or revised product Active: a family with PublishProductHierarchy
// (its Draft and Under Revision children with it), a product with SetState. A child whose
// family is not Active yet (new, or being revised) stays as it is: the family's
// publication publishes it.
func (s *productSyncer) publish(ctx context.Context, pl *productPlan, cur int) (bool, error) {
	var err error
	if pl.family {
		err = s.dv.PublishProductHierarchy(ctx, pl.id)
	} else {
		err = s.setProductState(ctx, pl.id, productActive)
	}
	if err != nil && hasCode(err, codeChildOfNonActiveFamily) {
		if published, perr := s.publishStubFamily(ctx, pl); perr != nil || published {
			return published, perr
		}
		pl.note = joinNote(pl.note, "left unpublished until its product family is published")
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("publishing product %s: %w", pl.id, err)
	}
	return true, nil
}

// publishStubFamily publishes the family of pl when it is a stub the app made for its
// products (ensureFamily) and not Active: the stub's own publication failed (a 503), and
// nothing else would publish it before the family's own event. Publishing the hierarchy
// publishes pl with it. A family whose own event holds it is left to that event.
func (s *productSyncer) publishStubFamily(ctx context.Context, pl *productPlan) (bool, error) {
	familyID := pl.p.ParentGroupedProductID
	if familyID <= 0 || pl.parentID == "" {
		return false, nil
	}
	rec, err := s.st.Get(ctx, state.Product, strconv.Itoa(familyID))
	switch {
	case errors.Is(err, state.ErrNotFound):
		return false, nil
	case err != nil:
		return false, transient(fmt.Errorf("reading product %d state: %w", familyID, err))
	case rec.Extra[extraFamilyStub] == "" || !strings.EqualFold(rec.DataverseID, pl.parentID) || s.leases.held(rec):
		return false, nil
	}
	if err := s.dv.PublishProductHierarchy(ctx, rec.DataverseID); err != nil {
		return false, fmt.Errorf("publishing product family %d, made for its products before its own event: %w", familyID, err)
	}
	return true, nil
}

// retire retires an Active product. Dynamics 365 refuses to retire a product that is in a
// price list, and a family while one of its children is: the product's item in the store
// price list goes first (it comes back when the product is published again), and when
// Dynamics 365 still refuses, the store price list items of the product and of the
// family's children are looked up, removed, and the retirement sent once more.
func (s *productSyncer) retire(ctx context.Context, pl *productPlan) error {
	if pl.priceItem != "" {
		if err := s.dv.Delete(ctx, "productpricelevels", pl.priceItem); err != nil && !dataverse.IsNotFound(err) {
			return fmt.Errorf("removing product %s from the price list before retiring it: %w", pl.id, err)
		}
	}
	pl.extra[extraPriceItemID], pl.extra[extraPriceAmount] = "", ""
	err := s.setProductState(ctx, pl.id, productRetired)
	if err == nil || !(hasCode(err, codeCannotRetireInPriceList) || hasCode(err, codeProductHasUnretiredChild)) {
		return err
	}
	sh, berr := s.boot.rows(ctx)
	if berr != nil {
		return berr
	}
	ids := []string{pl.id}
	if pl.family {
		qerr := s.dv.Query(ctx, "products", dataverse.Query{Select: []string{"productid"},
			Filter: "_parentproductid_value eq " + pl.id + " and statecode ne 1"}, func(r dataverse.Record) error {
			ids = append(ids, str(r["productid"]))
			return nil
		})
		if qerr != nil {
			return fmt.Errorf("looking up the children of product family %s: %w", pl.id, qerr)
		}
	}
	if err := s.removePriceItems(ctx, ids, sh); err != nil {
		return fmt.Errorf("removing the price list items before retiring product %s: %w", pl.id, err)
	}
	return s.setProductState(ctx, pl.id, productRetired)
}

func joinNote(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + "; " + b
}

func (s *productSyncer) setProductState(ctx context.Context, id string, st int) error {
	status := map[int]int{productActive: 1, productRetired: 2, productDraft: 0, productUnderRevision: 3}[st]
	err := s.dv.Update(ctx, "products", id, dataverse.Record{"statecode": st, "statuscode": status})
	if err != nil && !isTransient(err) {
		// Someone else (another order needing the product, another instance) may have
		// made the same change a moment ago ("The product is already Active").
		if cur, ok, rerr := s.productState(ctx, id); rerr == nil && ok && cur == st {
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("setting product %s to state %d: %w", id, st, err)
	}
	return nil
}

// productState reads a product's statecode; exists is false when there is no row.
func (s *productSyncer) productState(ctx context.Context, id string) (st int, exists bool, err error) {
	row, err := s.productLifecycle(ctx, id)
	return row.state, row.exists, err
}

// productRowInfo is what the product lifecycle needs of a row.
type productRowInfo struct {
	exists bool
	state  int    // statecode
	family bool   // productstructure is a product family
	parent string // the parent family's row, "" for none
}

// retiredForGood reports whether the row can never be Active again once retired: a
// family, or a product with a parent (Sales developer guide, product lifecycle).
func (r productRowInfo) retiredForGood() bool { return r.family || r.parent != "" }

// productLifecycle reads a product's state, structure and parent: one read of the row.
func (s *productSyncer) productLifecycle(ctx context.Context, id string) (productRowInfo, error) {
	r, err := s.dv.Retrieve(ctx, "products", id, "statecode,productstructure,_parentproductid_value")
	if dataverse.IsNotFound(err) {
		return productRowInfo{}, nil
	}
	if err != nil {
		return productRowInfo{}, fmt.Errorf("reading product %s: %w", id, err)
	}
	st, ok := intValue(r["statecode"])
	if !ok {
		st = productDraft
	}
	structure, _ := intValue(r["productstructure"])
	parent, _ := r["_parentproductid_value"].(string)
	return productRowInfo{exists: true, state: st, family: structure == productStructureFamily, parent: strings.ToLower(parent)}, nil
}

// retiredNote says why a change of a product retired for good was not written: a retired
// family, a product retired with its family, or a product of a family retired by its own
// delete (the app retires products of a family only when deleted, never when unpublished).
func (s *productSyncer) retiredNote(ctx context.Context, row productRowInfo) (string, error) {
	if row.family {
		return "retired in Dynamics 365 (deleted in nopCommerce): a retired product family can't be re-activated, so this change was not written", nil
	}
	fam, err := s.productLifecycle(ctx, row.parent)
	if err != nil {
		return "", err
	}
	if fam.exists && fam.state != productRetired {
		return "retired in Dynamics 365 when it was deleted in nopCommerce (its product family was not): a retired product of a product family can't be re-activated, so this change was not written", nil
	}
	return "retired in Dynamics 365 with its product family (deleted in nopCommerce): a retired family or a retired product of a family can't be re-activated, so this change was not written", nil
}

// writePriceItem keeps the product's one price list item in the store price list:
// amount = price, base unit.
func (s *productSyncer) writePriceItem(ctx context.Context, pl *productPlan, rec *state.Record, sh *shared) error {
	if priceItemCurrent(pl, rec, sh) {
		return nil
	}
	prec := sh.precision()
	id := rec.Extra[extraPriceItemID]
	if id == "" {
		id = deterministicID(pl.storeID, "productpricelevel", strconv.Itoa(pl.p.ID))
	}
	r := priceItemRecord(pl, sh, prec)
	_, err := s.dv.Upsert(ctx, "productpricelevels", id, r, dataverse.Upsert)
	if err != nil && hasCode(err, codeDuplicateProductPrice) {
		// The (adopted) product already has a price for this unit in this price list.
		existing, ferr := findOne(ctx, s.dv, "productpricelevels", []string{"productpricelevelid"},
			"_pricelevelid_value eq "+sh.PriceListID+" and _productid_value eq "+pl.id+" and _uomid_value eq "+sh.BaseUnitID)
		if ferr != nil {
			return fmt.Errorf("looking up the price list item of product %s: %w", pl.id, ferr)
		}
		if existing == nil {
			return fmt.Errorf("writing price list item of product %s: %w", pl.id, err)
		}
		id = strings.ToLower(str(existing["productpricelevelid"]))
		err = s.dv.Update(ctx, "productpricelevels", id, dataverse.Record{"amount": r["amount"]})
	}
	if err != nil {
		return fmt.Errorf("writing price list item of product %s: %w", pl.id, err)
	}
	pl.extra[extraPriceItemID] = id
	pl.extra[extraPriceAmount] = priceAmount(pl, sh)
	return nil
}

// removePriceItems deletes the items of the products ids in the store price list, found
// with as few queries as a URL takes.
func (s *productSyncer) removePriceItems(ctx context.Context, ids []string, sh *shared) error {
	var items []string
	for _, filter := range orFilters(eqConds("_productid_value", ids), maxFilterBytes,
		func(f string) string { return "_pricelevelid_value eq " + sh.PriceListID + " and (" + f + ")" }) {
		err := s.dv.Query(ctx, "productpricelevels", dataverse.Query{Select: []string{"productpricelevelid"}, Filter: filter},
			func(r dataverse.Record) error {
				items = append(items, str(r["productpricelevelid"]))
				return nil
			})
		if err != nil {
			return fmt.Errorf("looking up price list items: %w", err)
		}
	}
	for _, id := range items {
		if err := s.dv.Delete(ctx, "productpricelevels", id); err != nil && !dataverse.IsNotFound(err) {
			return fmt.Errorf("removing price list item %s: %w", id, err)
		}
	}
	return nil
}

// dropPriceItem removes the price list item of a product that became a family: the app
// writes price list items for products only, so a family keeps none of its days as a
// product; it goes as the item of a product leaving the price list does (retire). The
// state names the item; when it does not (lost with the state) and the row was a
// product until now, the row's items in the store price list are looked up.
func (s *productSyncer) dropPriceItem(ctx context.Context, pl *productPlan, sh *shared) error {
	switch {
	case pl.priceItem != "":
		if err := s.dv.Delete(ctx, "productpricelevels", pl.priceItem); err != nil && !dataverse.IsNotFound(err) {
			return fmt.Errorf("removing the price list item of product family %s: %w", pl.id, err)
		}
	case pl.becameFamily:
		if err := s.removePriceItems(ctx, []string{pl.id}, sh); err != nil {
			return fmt.Errorf("removing the price list items of product family %s: %w", pl.id, err)
		}
	}
	pl.priceItem = ""
	pl.extra[extraPriceItemID], pl.extra[extraPriceAmount] = "", ""
	return nil
}

// priceAmount is the price list item amount for a product, as written.
func priceAmount(pl *productPlan, sh *shared) string {
	return moneyValue(pl.p.Price, sh.precision().price).String() + "@" + sh.PriceListID
}

// priceItemCurrent reports that the product's price list item already holds its price
// (a stock or name change needs no price list write). A forced re-sync (DataHash
// cleared) writes it anyway.
func priceItemCurrent(pl *productPlan, rec *state.Record, sh *shared) bool {
	return rec.DataHash != "" && rec.Extra[extraPriceItemID] != "" && rec.Extra[extraPriceAmount] == priceAmount(pl, sh)
}

func priceItemRecord(pl *productPlan, sh *shared, prec precision) dataverse.Record {
	return dataverse.Record{
		"amount":                           moneyValue(pl.p.Price, prec.price),
		"pricingmethodcode":                1,
		"quantitysellingcode":              1,
		"pricelevelid@odata.bind":          dataverse.Bind("pricelevels", sh.PriceListID),
		"productid@odata.bind":             dataverse.Bind("products", pl.id),
		"uomid@odata.bind":                 dataverse.Bind("uoms", sh.BaseUnitID),
		"uomscheduleid@odata.bind":         dataverse.Bind("uomschedules", sh.UnitGroupID),
		"transactioncurrencyid@odata.bind": dataverse.Bind("transactioncurrencies", sh.CurrencyID),
	}
}

// reasonProductDeleted is the note of a product deleted in the store whose row is no longer
// in Dynamics 365.
const reasonProductDeleted = "deleted in nopCommerce; product deleted"

// deleteProduct applies a store delete: Retired (deactivate), deleted when no order line
// uses it (delete; else Retired), or nothing (ignore).
func (s *productSyncer) deleteProduct(ctx context.Context, storeID int, p *nop.Product, rec *state.Record) (outcome, error) {
	policy := s.settings.deletePolicy()
	hash := hashOf(dataverse.Record{"deleted": true, "policy": policy})
	if rec.Status == state.Synced && rec.DataHash == hash {
		return outcome{status: state.Synced, reason: rec.Reason, dataverseID: rec.DataverseID, hash: hash}, nil
	}
	// The family's own event has come (a delete): its record is no stub any more, so a
	// product naming it later reads what became of it (ensureFamily).
	delete(rec.Extra, extraFamilyStub)
	if policy == DeleteIgnore {
		return outcome{status: state.Skipped, reason: "deleted in nopCommerce; DELETE_POLICY=ignore keeps the product", dataverseID: rec.DataverseID, hash: hash}, nil
	}
	id := rec.DataverseID
	if id == "" {
		id = deterministicID(storeID, "product", strconv.Itoa(p.ID))
	}
	row, err := s.productLifecycle(ctx, id)
	if err != nil {
		return outcome{}, err
	}
	cur, exists := row.state, row.exists
	if !exists {
		reason := "deleted in nopCommerce before it reached Dynamics 365"
		if rec.DataverseID != "" {
			// It had reached Dynamics 365, and its row is gone (deleted by this policy
			// earlier, re-driven since, or by an admin): its number is free there.
			reason = reasonProductDeleted
			s.releaseNumber(ctx, storeID, p.ID, rec.Extra[extraProductNumber])
		}
		return outcome{status: state.Synced, reason: reason, dataverseID: rec.DataverseID, hash: hash}, nil
	}
	kept := "" // why DELETE_POLICY=delete did not delete it
	if policy == DeleteDelete {
		used, err := s.productUsed(ctx, id)
		if err != nil {
			return outcome{}, err
		}
		children := false
		if !used {
			// Deleting a family deletes its products (product table reference:
			// product_parent_product, Delete: Cascade), which the store still has.
			if children, err = s.hasChildProducts(ctx, id); err != nil {
				return outcome{}, err
			}
		}
		switch {
		case used:
			kept = "retired because order lines use it"
		case children:
			kept = "retired with the products of its family, not deleted: Dynamics 365 would delete them with it"
		default:
			err := s.dv.Delete(ctx, "products", id)
			if err == nil || dataverse.IsNotFound(err) {
				s.releaseNumber(ctx, storeID, p.ID, rec.Extra[extraProductNumber])
				return outcome{status: state.Synced, reason: reasonProductDeleted, dataverseID: id, hash: hash}, nil
			}
			if isTransient(err) {
				return outcome{}, fmt.Errorf("deleting product %s: %w", id, err)
			}
			kept = "retired because Dynamics 365 refused the delete: " + cut.Runes(err.Error(), 300)
		}
	}
	pl := &productPlan{storeID: storeID, p: p, id: id, family: p.ProductType == nop.ProductTypeGrouped || row.family, active: false,
		priceItem: rec.Extra[extraPriceItemID], extra: map[string]string{}}
	if err := s.settleLifecycle(ctx, pl, cur); err != nil {
		return outcome{}, err
	}
	delete(rec.Extra, extraPriceItemID) // removed before the product was retired
	delete(rec.Extra, extraPriceAmount)
	reason := "deleted in nopCommerce; product retired"
	if pl.family {
		// Retiring a family retires its hierarchy (Sales developer guide, product
		// lifecycle); its products' own records say so at their next event.
		reason = "deleted in nopCommerce; product family retired, and its products with it (for good: they can't be re-activated)"
	}
	if kept != "" {
		reason = "deleted in nopCommerce; " + kept
	}
	return outcome{status: state.Synced, reason: joinNote(reason, pl.note), dataverseID: id, hash: hash}, nil
}

// productUsed tells whether an order line uses product id.
func (s *productSyncer) productUsed(ctx context.Context, id string) (bool, error) {
	return s.referenced(ctx, "salesorderdetails", "salesorderdetailid", "_productid_value", id, "order lines")
}

// hasChildProducts tells whether product id is the parent of any product row.
func (s *productSyncer) hasChildProducts(ctx context.Context, id string) (bool, error) {
	return s.referenced(ctx, "products", "productid", "_parentproductid_value", id, "child products")
}

// referenced tells whether a row of set (primary key pk) points at product id through lookup.
func (s *productSyncer) referenced(ctx context.Context, set, pk, lookup, id, what string) (bool, error) {
	r, err := findOne(ctx, s.dv, set, []string{pk}, lookup+" eq "+id)
	if err != nil {
		return false, fmt.Errorf("checking %s of product %s: %w", what, id, err)
	}
	return r != nil, nil
}

// errFamilyDeleted: the family was deleted in the store before it reached Dynamics 365.
var errFamilyDeleted = errors.New("product family deleted before it reached Dynamics 365")

// ensureFamily returns the family row of a grouped product, creating a Draft stub (and a
// state record for it) when the family's own event has not arrived yet; the family event
// later fills the stub. It returns "" when the state holds the product as a simple one.
// verify is true when the row may be retired or gone, which only a read of it tells: a
// family written from its own event (an admin may have retired or deleted it in
// Dynamics 365 since; an import reads it with the chunk's look-up, an event one by one
// with one request), or a row found in Dynamics 365 after a lost state. A stub the app
// made (now or before its family's own event) is not read: only that event can retire it.
func (s *productSyncer) ensureFamily(ctx context.Context, storeID, familyID, childID int, sh *shared) (id string, verify bool, err error) {
	rec, err := s.st.Get(ctx, state.Product, strconv.Itoa(familyID))
	switch {
	case err == nil:
		deleted := false
		if rec.DataverseID != "" && rec.Extra[extraFamilyStub] == "" {
			ev, derr := nop.DecodeStored(rec.Data)
			if derr == nil && ev.Product != nil && !ev.Product.Deleted &&
				ev.Product.ProductType != nop.ProductTypeGrouped && rec.Extra[extraKeptFamily] == "" {
				return "", false, nil // a simple product: no family to put the child in
			}
			deleted = derr == nil && ev.Product != nil && ev.Product.Deleted
		}
		if rec.DataverseID != "" {
			stub := rec.Extra[extraFamilyStub] == "true" && rec.Extra[extraProductNumber] != ""
			return rec.DataverseID, deleted || !stub, nil
		}
		if ev, derr := nop.DecodeStored(rec.Data); derr == nil && ev.Product != nil && ev.Product.Deleted {
			// Deleted in the store before it reached Dynamics 365: no stub for it.
			return "", false, errFamilyDeleted
		}
		if s.leases.held(rec) {
			return "", false, transient(fmt.Errorf("product family %d: %w", familyID, errBusy))
		}
	case errors.Is(err, state.ErrNotFound):
		rec = nil
	default:
		return "", false, transient(fmt.Errorf("reading product %d state: %w", familyID, err))
	}
	id = deterministicID(storeID, "product", strconv.Itoa(familyID))
	stub := productFields(&nop.Product{ID: familyID, ProductType: nop.ProductTypeGrouped,
		Name: "nopCommerce product " + strconv.Itoa(familyID)}, sh)
	stub["productnumber"] = fallbackNumber(storeID, familyID)
	_, err = s.dv.Upsert(ctx, "products", id, stub, dataverse.CreateOnly)
	found := false
	switch {
	case err == nil:
		// Published at once so its children can be published (and sold) before the
		// family's own event arrives; that event revises it with the real data.
		if perr := s.dv.PublishProductHierarchy(ctx, id); perr != nil {
			s.log.Warn("publishing product family stub", "family", familyID, "error", perr)
		}
	case dataverse.IsConflict(err):
		// The row is there: a stub of an earlier attempt (its made-up number), or the
		// family itself (the sync state was lost).
		row, rerr := s.dv.Retrieve(ctx, "products", id, "productnumber,statecode")
		if rerr != nil {
			return "", false, fmt.Errorf("reading product family %d for product %d: %w", familyID, childID, rerr)
		}
		found = !strings.EqualFold(str(row["productnumber"]), fallbackNumber(storeID, familyID))
		verify = intField(row, "statecode") == productRetired
	default:
		return "", false, fmt.Errorf("creating product family %d for product %d: %w", familyID, childID, err)
	}
	if rec == nil {
		nr := &state.Record{Entity: state.Product, ID: strconv.Itoa(familyID), DataverseID: id, Status: state.Pending,
			Reason: fmt.Sprintf("created as the product family of product %d; waiting for its own event", childID),
			Extra:  map[string]string{extraFamilyStub: "true", extraProductNumber: fallbackNumber(storeID, familyID)},
		}
		if found {
			// Not written now: its product number and data are what Dynamics 365 holds,
			// and the family's own event (which may not come again) writes the store's.
			nr.Status, nr.SyncedAt = state.Synced, s.now()
			nr.Reason = fmt.Sprintf("found in Dynamics 365 as the product family of product %d, left as it is; its own event writes its data", childID)
			delete(nr.Extra, extraProductNumber)
		}
		if err := s.st.Save(ctx, nr); err != nil && !errors.Is(err, state.ErrConflict) {
			return "", false, transient(fmt.Errorf("saving product family %d state: %w", familyID, err))
		}
	}
	return id, verify, nil
}

// ensureProduct returns the product row of an order line, creating the product from the
// line's data when the app has not synced it yet (the product's own event later fills in
// price, stock and the rest).
func (s *productSyncer) ensureProduct(ctx context.Context, storeID int, ip nop.ItemProduct) (_ string, rerr error) {
	key := strconv.Itoa(ip.ID)
	// Orders of one chunk often share products: one of them creates it, the others wait
	// and find it in state.
	mu, _ := s.ensuring.LoadOrStore("product/"+key, &sync.Mutex{})
	mu.(*sync.Mutex).Lock()
	defer mu.(*sync.Mutex).Unlock()
	rec, err := s.st.Get(ctx, state.Product, key)
	switch {
	case err == nil:
		if rec.DataverseID != "" {
			return rec.DataverseID, nil
		}
	case errors.Is(err, state.ErrNotFound):
		rec = nil
	default:
		return "", transient(fmt.Errorf("reading product %d state: %w", ip.ID, err))
	}
	sh, err := s.boot.rows(ctx)
	if err != nil {
		return "", err
	}
	work, err := s.leases.claimForOrder(ctx, state.Product, key, rec)
	if err != nil {
		return "", err
	}
	defer s.leases.releaseForOrder(ctx, work, &rerr)
	if work.DataverseID != "" { // written by the product's own event while we waited
		return work.DataverseID, nil
	}
	fresh := neverApplied(work)
	kctx, stop := s.leases.keep(ctx, []*state.Record{work})
	defer stop()
	id, err := s.createForOrder(kctx, storeID, ip, work, sh, fresh)
	return id, leaseLost(kctx, err)
}

// createForOrder writes the product of an order line from the line's data (its lease
// held by ensureProduct).
func (s *productSyncer) createForOrder(ctx context.Context, storeID int, ip nop.ItemProduct, work *state.Record, sh *shared, fresh bool) (string, error) {
	p := &nop.Product{ID: ip.ID, ProductType: ip.ProductType, ParentGroupedProductID: ip.ParentGroupedProductID,
		Name: ip.Name, Sku: ip.Sku, Published: true}
	if p.ProductType != nop.ProductTypeGrouped {
		p.ProductType = nop.ProductTypeSimple
	}
	pl, err := s.planProduct(ctx, storeID, p, work, sh, nil)
	if err != nil {
		return "", err
	}
	if pl.foundMade {
		// Dynamics 365 has the product the app wrote (the sync state was lost): the order
		// uses it as it is, as it would with the state intact (a Retired one through a
		// write-in line). Written from the line, its price, stock and description would be
		// lost, a Retired one made Active again, and the product's own event may never come
		// again. Rows adopted by product number (an admin's) are written as before: their
		// unit group may not be the app's, which the order line needs.
		work.DataverseID = pl.id
		if fresh {
			work.Status, work.SyncedAt = state.Synced, s.now()
			work.Reason = "found in Dynamics 365 for an order line, left as it is; the product's own event writes its data"
		}
		return pl.id, nil
	}
	if err := s.applyProduct(ctx, pl, work, sh); err != nil {
		return "", err
	}
	work.DataverseID = pl.id
	if fresh {
		// DataHash stays empty: the product's own event writes all its data.
		work.Status, work.SyncedAt = state.Synced, s.now()
		work.Reason = "created from an order line; the product's own event has not arrived yet"
	}
	return pl.id, nil
}

// fetchImage downloads a picture (size-capped, with the client's timeout) as base64.
func (s *productSyncer) fetchImage(ctx context.Context, rawURL string) (string, error) {
	url := pictures.Shown(rawURL) // what errors say: the query may hold a token
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return "", fmt.Errorf("picture %s: does not parse as a URL", url)
	}
	resp, err := s.http.Do(req)
	if err != nil {
		var ue *neturl.Error
		if errors.As(err, &ue) {
			ue.URL = pictures.Shown(ue.URL)
		}
		return "", fmt.Errorf("fetching picture: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("fetching picture %s: HTTP %d", url, resp.StatusCode)
	}
	max := int64(s.settings.ImageMaxBytes)
	b, err := io.ReadAll(io.LimitReader(resp.Body, max+1))
	if err != nil {
		return "", fmt.Errorf("reading picture %s: %w", url, err)
	}
	if int64(len(b)) > max {
		return "", fmt.Errorf("picture %s is larger than %d bytes", url, max)
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// hasCode reports whether err is a Dataverse error with the given code.
func hasCode(err error, code string) bool {
	var de *dataverse.Error
	return errors.As(err, &de) && strings.EqualFold(de.Code, code)
}
