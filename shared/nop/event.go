// Package nop holds the events a nopCommerce store sends (docs/events.md): their types,
// decoding and validation at intake (DecodeRequest), and the queue envelope they travel
// in (Messages, DecodeEnvelope).
//
// Decoding is strict about what docs/events.md defines (field names match exactly, JSON types,
// ranges, nopCommerce enumerations) and ignores fields it does not know, so an emitter
// can add fields (for example previousOrderStatus) without breaking older receivers.
//
// Representation choices:
//   - "string or null" fields are *string: nil for null or absent, never "" for null.
//     A present "" stays "".
//   - Optional objects (customer.address, order.shippingAddress) are nil when null.
//   - Money is exact (see Money); times are UTC time.Time.
//   - Currency and country codes are upper-cased in the typed structs (the raw event is
//     kept byte for byte in Event.Raw and Event.Data).
package nop

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nopsync/nopsync/shared/state"
)

// Entity is a nopCommerce entity kind: "customer", "product" or "order".
type Entity = state.Entity

// Enumerations, nopCommerce's integers (src/Libraries/Nop.Core/Domain/Catalog/ProductType.cs,
// Catalog/ManageInventoryMethod.cs, Orders/OrderStatus.cs, Payments/PaymentStatus.cs,
// Shipping/ShippingStatus.cs in nopcommerce/nopCommerce).
const (
	ProductTypeSimple  = 5
	ProductTypeGrouped = 10

	ManageInventoryNone         = 0
	ManageInventoryStock        = 1
	ManageInventoryByAttributes = 2

	OrderStatusPending    = 10
	OrderStatusProcessing = 20
	OrderStatusComplete   = 30
	OrderStatusCancelled  = 40

	PaymentStatusPending           = 10
	PaymentStatusAuthorized        = 20
	PaymentStatusPaid              = 30
	PaymentStatusPartiallyRefunded = 35
	PaymentStatusRefunded          = 40
	PaymentStatusVoided            = 50

	ShippingStatusNotRequired      = 10
	ShippingStatusNotYetShipped    = 20
	ShippingStatusPartiallyShipped = 25
	ShippingStatusShipped          = 30
	ShippingStatusDelivered        = 40
)

// Actions lists the allowed actions per entity (docs/events.md).
var Actions = map[Entity][]string{
	state.Customer: {"created", "updated", "deleted"},
	state.Product:  {"created", "updated", "deleted"},
	state.Order:    {"placed", "paid", "status_changed", "cancelled", "completed", "refunded", "voided", "updated", "deleted"},
}

// ParseEntity returns the entity named s ("customer", "product", "order").
func ParseEntity(s string) (Entity, bool) {
	switch Entity(s) {
	case state.Customer, state.Product, state.Order:
		return Entity(s), true
	}
	return "", false
}

// Address is an address object; every field is a string or null (nil).
type Address struct {
	FirstName      *string `json:"firstName"`
	LastName       *string `json:"lastName"`
	Email          *string `json:"email"`
	Company        *string `json:"company"`
	Address1       *string `json:"address1"`
	Address2       *string `json:"address2"`
	City           *string `json:"city"`
	County         *string `json:"county"`
	StateProvince  *string `json:"stateProvince"`
	ZipPostalCode  *string `json:"zipPostalCode"`
	Country        *string `json:"country"`
	CountryIsoCode *string `json:"countryIsoCode"` // 2 letters, upper-cased; nil when null or ""
	Phone          *string `json:"phone"`
}

// Customer is customer data (also the customer snapshot inside an order).
type Customer struct {
	ID           int       `json:"id"`
	CustomerGUID string    `json:"customerGuid"`
	Email        *string   `json:"email"`
	Username     *string   `json:"username"`
	FirstName    *string   `json:"firstName"`
	LastName     *string   `json:"lastName"`
	Company      *string   `json:"company"`
	Phone        *string   `json:"phone"`
	IsGuest      bool      `json:"isGuest"`
	IsRegistered bool      `json:"isRegistered"`
	Active       bool      `json:"active"`
	Deleted      bool      `json:"deleted"`
	CreatedOnUtc time.Time `json:"createdOnUtc"`
	Address      *Address  `json:"address"`
}

// Product is product data.
type Product struct {
	ID                     int       `json:"id"`
	ProductType            int       `json:"productType"`            // ProductTypeSimple or ProductTypeGrouped
	ParentGroupedProductID int       `json:"parentGroupedProductId"` // 0: none
	Name                   string    `json:"name"`
	ShortDescription       *string   `json:"shortDescription"`
	FullDescription        *string   `json:"fullDescription"`
	Sku                    *string   `json:"sku"`
	Gtin                   *string   `json:"gtin"`
	ManufacturerPartNumber *string   `json:"manufacturerPartNumber"`
	Price                  Money     `json:"price"`
	ProductCost            Money     `json:"productCost"`
	OldPrice               Money     `json:"oldPrice"`
	StockQuantity          int       `json:"stockQuantity"`
	ManageInventoryMethod  int       `json:"manageInventoryMethod"`
	Published              bool      `json:"published"`
	Deleted                bool      `json:"deleted"`
	UpdatedOnUtc           time.Time `json:"updatedOnUtc"`
	PictureURLs            []string  `json:"pictureUrls"`          // display order; never nil after decoding
	AssociatedProductIDs   []int     `json:"associatedProductIds"` // grouped products only; never nil after decoding
}

// ItemProduct is the product of an order item, as it is now.
type ItemProduct struct {
	ID                     int     `json:"id"`
	Name                   string  `json:"name"`
	Sku                    *string `json:"sku"`
	ProductType            int     `json:"productType"`
	ParentGroupedProductID int     `json:"parentGroupedProductId"`
}

// OrderItem is one order line. Price* are line totals after item discounts.
type OrderItem struct {
	ID                    int         `json:"id"`
	OrderItemGUID         string      `json:"orderItemGuid"`
	Product               ItemProduct `json:"product"`
	Quantity              int         `json:"quantity"`
	UnitPriceInclTax      Money       `json:"unitPriceInclTax"`
	UnitPriceExclTax      Money       `json:"unitPriceExclTax"`
	PriceInclTax          Money       `json:"priceInclTax"`
	PriceExclTax          Money       `json:"priceExclTax"`
	DiscountAmountInclTax Money       `json:"discountAmountInclTax"`
	DiscountAmountExclTax Money       `json:"discountAmountExclTax"`
	AttributeDescription  *string     `json:"attributeDescription"`
}

// Order is order data. Amounts are in the store's primary currency (CurrencyCode).
type Order struct {
	ID                                int         `json:"id"`
	OrderGUID                         string      `json:"orderGuid"`
	CustomOrderNumber                 string      `json:"customOrderNumber"`
	Customer                          Customer    `json:"customer"`
	CurrencyCode                      string      `json:"currencyCode"` // 3 letters, upper-cased
	CustomerCurrencyCode              string      `json:"customerCurrencyCode"`
	CurrencyRate                      Money       `json:"currencyRate"`
	OrderStatus                       int         `json:"orderStatus"`
	PaymentStatus                     int         `json:"paymentStatus"`
	ShippingStatus                    int         `json:"shippingStatus"`
	OrderSubtotalInclTax              Money       `json:"orderSubtotalInclTax"`
	OrderSubtotalExclTax              Money       `json:"orderSubtotalExclTax"`
	OrderSubTotalDiscountInclTax      Money       `json:"orderSubTotalDiscountInclTax"`
	OrderSubTotalDiscountExclTax      Money       `json:"orderSubTotalDiscountExclTax"`
	OrderShippingInclTax              Money       `json:"orderShippingInclTax"`
	OrderShippingExclTax              Money       `json:"orderShippingExclTax"`
	PaymentMethodAdditionalFeeInclTax Money       `json:"paymentMethodAdditionalFeeInclTax"`
	PaymentMethodAdditionalFeeExclTax Money       `json:"paymentMethodAdditionalFeeExclTax"`
	OrderTax                          Money       `json:"orderTax"`
	OrderDiscount                     Money       `json:"orderDiscount"`
	OrderTotal                        Money       `json:"orderTotal"`
	RefundedAmount                    Money       `json:"refundedAmount"`
	PaymentMethodSystemName           *string     `json:"paymentMethodSystemName"`
	ShippingMethod                    *string     `json:"shippingMethod"`
	PaidDateUtc                       *time.Time  `json:"paidDateUtc"`
	CreatedOnUtc                      time.Time   `json:"createdOnUtc"`
	Deleted                           bool        `json:"deleted"`
	BillingAddress                    Address     `json:"billingAddress"`
	ShippingAddress                   *Address    `json:"shippingAddress"`
	Items                             []OrderItem `json:"items"`
}

// Event is one validated event. Exactly one of Customer, Product, Order is set, the one
// of the event's entity.
type Event struct {
	ID            string
	Type          string // "<entity>.<action>"
	OccurredOnUtc time.Time
	Sequence      *int64 // nil when the event carries none
	StoreID       int    // 1 when absent

	Data json.RawMessage // the data object, byte for byte as received
	Raw  json.RawMessage // the whole event object, byte for byte as received

	Customer *Customer
	Product  *Product
	Order    *Order
}

// Entity returns the event's entity, from its type.
func (e *Event) Entity() Entity {
	ent, _, _ := strings.Cut(e.Type, ".")
	return Entity(ent)
}

// Action returns the event's action, from its type ("paid" for "order.paid").
func (e *Event) Action() string {
	_, act, _ := strings.Cut(e.Type, ".")
	return act
}

// EntityID returns data.id in decimal: the entity's nopCommerce id and its state key.
func (e *Event) EntityID() string {
	switch {
	case e.Customer != nil:
		return strconv.Itoa(e.Customer.ID)
	case e.Product != nil:
		return strconv.Itoa(e.Product.ID)
	case e.Order != nil:
		return strconv.Itoa(e.Order.ID)
	}
	return ""
}

// Deleted reports data.deleted.
func (e *Event) Deleted() bool {
	switch {
	case e.Customer != nil:
		return e.Customer.Deleted
	case e.Product != nil:
		return e.Product.Deleted
	case e.Order != nil:
		return e.Order.Deleted
	}
	return false
}

// WithID returns the event again with id as its id: Raw with the value of its "id"
// member replaced and every other byte kept, decoded and checked as a request's event
// is. The push agent uses it to tell a pass's events apart from an earlier pass's with
// the same data (a row that went back to an earlier state).
func (e *Event) WithID(id string) (*Event, error) {
	members, ok := splitObject(e.Raw)
	if !ok {
		return nil, &ValidationError{Index: -1, Message: "event " + e.ID + " is not a JSON object"}
	}
	quoted, err := json.Marshal(id)
	if err != nil {
		return nil, fmt.Errorf("event %s: encoding id %q: %w", e.ID, id, err)
	}
	raw := make([]byte, 0, len(e.Raw)+len(quoted))
	from, found := 0, false
	for _, m := range members {
		if m.key != "id" {
			continue
		}
		raw = append(append(raw, e.Raw[from:m.at]...), quoted...)
		from, found = m.at+len(m.value), true
	}
	if !found {
		return nil, &ValidationError{Index: -1, Field: "id", Message: "event has no id"}
	}
	raw = append(raw, e.Raw[from:]...)
	evs, err := DecodeRequest(e.Entity(), raw)
	if err != nil {
		return nil, err
	}
	return evs[0], nil
}
