// Package state defines the sync state the app keeps per nopCommerce entity, and the
// Store that holds it. Implementations: tablestorage (Azure Table Storage / Azurite)
// and localstore (embedded, for local mode). statetest holds the suite both must pass.
package state

import (
	"context"
	"errors"
	"time"
)

// Entity is a nopCommerce entity kind as it appears in routes and state.
type Entity string

const (
	Customer Entity = "customer"
	Product  Entity = "product"
	Order    Entity = "order"
)

// Entities lists every entity kind in bootstrap order (products before the orders that use them).
var Entities = []Entity{Customer, Product, Order}

// Status is where an entity stands with Dynamics 365.
type Status string

const (
	// Pending: received, not yet written (or writes are disabled).
	Pending Status = "pending"
	// Synced: Dynamics 365 holds the entity's latest applied state.
	Synced Status = "synced"
	// Skipped: deliberately not written (guest customer, stale event, filtered); Reason says why.
	Skipped Status = "skipped"
	// Failed: the last attempt failed; Reason says why, Transient says whether a retry can help.
	Failed Status = "failed"
)

// Statuses lists every status, in the order the status page shows them.
var Statuses = []Status{Synced, Pending, Failed, Skipped}

// Record is the sync state of one nopCommerce entity.
type Record struct {
	Entity Entity
	ID     string // nopCommerce id, decimal

	DataverseID string // primary key of the main Dataverse row (contact, product, salesorder)
	Status      Status
	Reason      string // skip reason or last error; never holds secrets
	Transient   bool   // with Failed: a retry may succeed (autosync re-drives these)
	Attempts    int    // failed attempts since the last success

	OrderKey    string // applied order key (nop.Event.OrderKey), compared as a string
	LastEventID string
	SyncedAt    time.Time // last successful write
	UpdatedAt   time.Time // last change of this record (set by the store)

	DataHash string // hash of what was last written to Dataverse: unchanged data causes no write
	Data     []byte // the last received event (JSON), so a full re-sync can run from state

	// Extra holds engine-specific facts (invoice id, steps done, adopted ids, conflicts).
	Extra map[string]string

	// LeaseOwner/LeaseUntil serialise work on one entity across instances: a writer claims
	// the record (Save with its lease) before writing to Dataverse.
	LeaseOwner string
	LeaseUntil time.Time

	// ETag is the store's version of the record: "" for a record not yet stored.
	ETag string
}

// Counts holds the number of records per entity and status.
type Counts map[Entity]map[Status]int

// Doc is a small named document (auto-sync lease and last run, sync runs, settings).
type Doc struct {
	Kind  string
	Key   string
	Value []byte
	ETag  string
}

var (
	// ErrNotFound: no record or doc with that key.
	ErrNotFound = errors.New("state: not found")
	// ErrConflict: the stored version differs from the ETag given (or a create found one).
	ErrConflict = errors.New("state: conflict")
)

// Store holds sync state. Implementations are safe for concurrent use.
type Store interface {
	// Get returns the record, or ErrNotFound.
	Get(ctx context.Context, entity Entity, id string) (*Record, error)
	// Save writes rec: create-only when rec.ETag is "", else only if the stored ETag
	// matches (ErrConflict otherwise). On success rec.ETag and rec.UpdatedAt are updated.
	// The per-status counts change together with the record, never apart.
	Save(ctx context.Context, rec *Record) error
	// Scan calls fn for every record of entity whose status is in statuses (all when
	// none given), in id order, until fn returns an error (returned as is).
	Scan(ctx context.Context, entity Entity, statuses []Status, fn func(*Record) error) error
	// Counts returns the kept counts; it does not read every record.
	Counts(ctx context.Context) (Counts, error)

	// GetMany returns the records of entity with the given ids that exist, by id (ids
	// without a record, or not valid as ids, are absent). An error means none were read.
	GetMany(ctx context.Context, entity Entity, ids []string) (map[string]*Record, error)
	// SaveMany saves recs with Save's rules, record by record: errs (as long as recs)
	// holds each record's result, as Save would return it (nil: saved, ETag and UpdatedAt
	// updated; ErrConflict: that record's stored version differs and nothing of it was
	// written; another error: as with Save, the store could not say, so reading the
	// record tells). One record's conflict never keeps another from being saved. The
	// result is as if recs were saved one after the other in slice order (the same record
	// twice: the second save sees the first). Counts change together with the records.
	// A store may write the records of one partition in one round trip.
	SaveMany(ctx context.Context, recs []*Record) (errs []error)

	// GetDoc returns a doc, or ErrNotFound.
	GetDoc(ctx context.Context, kind, key string) (*Doc, error)
	// SaveDoc writes a doc with the same ETag rules as Save.
	SaveDoc(ctx context.Context, doc *Doc) error
	// SaveDocs saves docs with SaveDoc's rules, doc by doc, as SaveMany saves records:
	// errs (as long as docs) holds each doc's result as SaveDoc would return it; one doc's
	// conflict never keeps another from being saved; the result is as if docs were saved
	// one after the other in slice order. A store may write the docs of one kind in one
	// round trip.
	SaveDocs(ctx context.Context, docs []*Doc) (errs []error)
	// ListDocs returns the docs of a kind, newest key last.
	ListDocs(ctx context.Context, kind string) ([]*Doc, error)
}
