// Package tablestorage is the state.Store on Azure Table Storage (and Azurite).
//
// Table layout (one table, default "syncstate"):
//
//	PartitionKey   RowKey                 what
//	customer-15    00000000000000001001   record of customer 1001, in the partition of its
//	                                      shard: decimal ids by blocks of 64 (1001 is in
//	                                      block 15; 16 shards); decimal ids zero-padded to
//	                                      20 digits so RowKey order is numeric
//	customer-03    kchunk-1f2e…           record of a non-decimal key ("k" + escaped key),
//	                                      its shard by hash of the key
//	customer-15    ~count-15-0            one of the shard's 4 counter rows: records per
//	                                      status (Int64 properties synced, pending, failed,
//	                                      skipped) of the records placed on it
//	doc-<kind>     <escaped key>          docs (auto-sync lease and runs, settings)
//	layout         shards                 how the table places records: "16 in blocks of
//	                                      64"; "16" in tables created before blocks, which
//	                                      place every record by hash of its id
//
// An entity's records are spread over its shards' partitions because Table Storage's
// target is about 2,000 entities/s per partition (20,000 per account), and an import
// reads and writes each record's state three times. Blocks of consecutive ids keep an
// import chunk (a few hundred consecutive ids) in a few partitions: a query and a
// transaction per 64 records, where placing by hash took one per shard for every chunk.
// Successive blocks go to successive shards, so the import as a whole spreads evenly.
// Scan merges the partitions back into id order.
//
// A record row has one property per field (Status, DataverseId, Reason, …, Extra as JSON,
// Data split over Edm.Binary properties D0, D1, … of 64 KiB). Characters Table Storage
// forbids in keys (/ \ # ? control characters), and % + ' !, are escaped as !XX.
//
// Counts are kept, not recounted: a Save that creates a record or changes its status
// writes the record and one of its partition's counter rows in ONE entity-group
// transaction, so records and counts never disagree. A record's counter row is picked by
// hash among its partition's four, so concurrent writers rarely contend for one. Counts()
// sums the counter rows of each entity: a few dozen small rows, however many records
// there are. A Save that keeps the status writes the record alone.
//
// Concurrency is optimistic. The record part of a write carries the caller's ETag
// (If-Match) or is an insert; if it fails, Save returns state.ErrConflict and retries
// nothing. The counter part carries the shard's last known ETag; if only it fails,
// another writer moved the same shard, so Save re-reads the shard and submits the
// transaction again. The state.Record ETag is "<status>|<table ETag>": the status the
// caller read is needed to know which count to decrement, and the If-Match guarantees
// it is still the stored one.
//
// GetMany and SaveMany (many.go) serve an import chunk: one query per partition for its
// reads, and its writes as entity-group transactions per partition, each carrying up to
// 100 operations: records and the counter rows they move, so counts stay in step there
// too.
package tablestorage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"

	"github.com/nopsync/nopsync/shared/state"
)

const (
	// DefaultTable is the table used when Options.Table is empty.
	DefaultTable = "syncstate"
	// DefaultShards is the number of counter rows per entity when Options.Shards is 0.
	DefaultShards = 16
	// counterRetries bounds how often a Save re-reads a contended counter shard.
	counterRetries = 30
)

// Options configures a Store.
type Options struct {
	// Table is the table name (created if missing); default DefaultTable.
	Table string
	// Shards is the number of partitions (each with its counter row) an entity's records
	// are spread over; default DefaultShards. A table keeps the number it was created with
	// (its layout row): records are found by it.
	Shards int
	// ClientOptions are passed to the aztables client (transport, retries, cloud).
	ClientOptions *aztables.ClientOptions
}

// Store is the Table Storage state.Store. It is safe for concurrent use; build it once.
type Store struct {
	svc   *aztables.ServiceClient
	c     *aztables.Client
	table string
	lay   atomic.Pointer[layout] // the table's (its layout row's); replaced only when a dropped table is made again

	mu       sync.Mutex
	counters map[string]*shard
}

var _ state.Store = (*Store)(nil)

// shard caches one counter row; its mutex serialises this process's writers of the shard.
type shard struct {
	mu     sync.Mutex
	pk, rk string
	loaded bool
	exists bool
	etag   azcore.ETag
	n      map[state.Status]int64
}

var tableName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9]{2,62}$`)

func (o Options) withDefaults() (Options, error) {
	if o.Table == "" {
		o.Table = DefaultTable
	}
	if !tableName.MatchString(o.Table) {
		return o, fmt.Errorf("tablestorage: table name %q: 3-63 letters and digits, starting with a letter", o.Table)
	}
	if o.Shards == 0 {
		o.Shards = DefaultShards
	}
	if o.Shards < 1 || o.Shards > 100 {
		return o, fmt.Errorf("tablestorage: %d counter shards: 1 to 100 allowed", o.Shards)
	}
	return o, nil
}

func (o Options) clientOptions() *aztables.ClientOptions {
	var co aztables.ClientOptions
	if o.ClientOptions != nil {
		co = *o.ClientOptions
	}
	co.PerCallPolicies = append(slices.Clone(co.PerCallPolicies), redactPolicy{}, capturePolicy{})
	return &co
}

// NewFromConnectionString opens the store with an account connection string, e.g.
// Azurite's "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=…;
// TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;" (UseDevelopmentStorage=true is
// not understood by aztables). The table is created if missing.
func NewFromConnectionString(ctx context.Context, connectionString string, o Options) (*Store, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	svc, err := aztables.NewServiceClientFromConnectionString(connectionString, o.clientOptions())
	if err != nil {
		// The SDK's message does not repeat the string (it holds the account key).
		return nil, fmt.Errorf("tablestorage: connection string: %w", err)
	}
	return open(ctx, svc, o)
}

// ServiceURL is the Table service URL of a storage account in Azure's public cloud, as
// the Functions host derives it from AzureWebJobsStorage__accountName.
func ServiceURL(account string) string {
	return "https://" + account + ".table.core.windows.net/"
}

// NewWithCredential opens the store at a Table service URL (https://<account>.table.core.windows.net/)
// with a token credential (managed identity in Azure: the identity needs Storage Table
// Data Contributor). The table is created if missing.
func NewWithCredential(ctx context.Context, serviceURL string, cred azcore.TokenCredential, o Options) (*Store, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	svc, err := aztables.NewServiceClient(serviceURL, cred, o.clientOptions())
	if err != nil {
		return nil, fmt.Errorf("tablestorage: service %s: %w", serviceURL, err)
	}
	return open(ctx, svc, o)
}

// NewForAccount is NewWithCredential(ctx, ServiceURL(account), cred, o): the setting
// AzureWebJobsStorage__accountName gives the account.
func NewForAccount(ctx context.Context, account string, cred azcore.TokenCredential, o Options) (*Store, error) {
	if !regexp.MustCompile(`^[a-z0-9]{3,24}$`).MatchString(account) {
		return nil, fmt.Errorf("tablestorage: storage account name %q: 3-24 lowercase letters and digits", account)
	}
	return NewWithCredential(ctx, ServiceURL(account), cred, o)
}

func open(ctx context.Context, svc *aztables.ServiceClient, o Options) (*Store, error) {
	s := &Store{svc: svc, c: svc.NewClient(o.Table), table: o.Table, counters: map[string]*shard{}}
	if err := s.ensureTable(ctx); err != nil {
		return nil, err
	}
	if _, err := s.loadLayout(ctx, layout{shards: o.Shards, block: blockSize}); err != nil {
		return nil, err
	}
	return s, nil
}

// The layout row records how a table places its records (layout: its number of shards
// and, for tables created since, its block size): records are found by it, so a table
// keeps it for life whatever Options.Shards says later.
const (
	layoutPartition = "layout"
	layoutRow       = "shards"
	layoutProp      = "Shards"
)

// loadLayout reads the table's layout row, or writes want there when it has none, and
// places records by what the row says from then on; changed reports that this differs
// from how the store placed them before (a table dropped and made again by another
// instance, or one built before blocks).
func (s *Store) loadLayout(ctx context.Context, want layout) (changed bool, err error) {
	for attempt := 0; ; attempt++ {
		resp, err := s.c.GetEntity(ctx, layoutPartition, layoutRow, nil)
		if err == nil {
			var e aztables.EDMEntity
			if err := json.Unmarshal(resp.Value, &e); err != nil {
				return false, fmt.Errorf("tablestorage: layout row: %w", err)
			}
			l, err := parseLayout(strProp(e.Properties, layoutProp))
			if err != nil {
				return false, fmt.Errorf("tablestorage: layout row of table %s: %w", s.table, err)
			}
			old := s.lay.Swap(&l)
			return old != nil && *old != l, nil
		}
		if statusOf(err) != http.StatusNotFound || attempt > 0 {
			return false, fmt.Errorf("tablestorage: read layout row: %w", err)
		}
		b, err := json.Marshal(aztables.EDMEntity{Entity: aztables.Entity{PartitionKey: layoutPartition, RowKey: layoutRow},
			Properties: map[string]any{layoutProp: want.String()}})
		if err != nil {
			return false, fmt.Errorf("tablestorage: layout row: %w", err)
		}
		if _, err := s.c.AddEntity(ctx, b, nil); err != nil && statusOf(err) != http.StatusConflict {
			return false, fmt.Errorf("tablestorage: write layout row: %w", err)
		}
		// Read it back: another instance may have created it first.
	}
}

// placement is how the table places records (its layout row).
func (s *Store) placement() layout { return *s.lay.Load() }

// errLayoutChanged fails a write whose records were placed by a layout the table no
// longer has: it was dropped and made again with another one. Sent again, they are
// placed by the table's.
var errLayoutChanged = errors.New("the state table was made again with another layout; try again")

// recreateTable makes a dropped table again (a wiped state table) with its layout row:
// the one this store places records by, unless another instance wrote one first, which
// this store then follows and reports with errLayoutChanged. Without the row, an
// instance starting later would write its own default and place records where this one
// does not look.
func (s *Store) recreateTable(ctx context.Context) error {
	if err := s.ensureTable(ctx); err != nil {
		return err
	}
	changed, err := s.loadLayout(ctx, s.placement())
	if err == nil && changed {
		err = errLayoutChanged
	}
	return err
}

// tableDropped reports whether a transaction failed because its table is gone: the
// service says so for the whole request or, in the answer's last part, for an operation.
func tableDropped(err error, results []opResult, perr error) bool {
	return hasCode(err, aztables.TableNotFound) ||
		(perr == nil && len(results) > 0 && results[len(results)-1].code == string(aztables.TableNotFound))
}

// Table returns the table's name.
func (s *Store) Table() string { return s.table }

func (s *Store) ensureTable(ctx context.Context) error {
	_, err := s.svc.CreateTable(ctx, s.table, nil)
	if err != nil && !hasCode(err, aztables.TableAlreadyExists) {
		return fmt.Errorf("tablestorage: create table %s: %w", s.table, err)
	}
	return nil
}

// DeleteTable drops the whole table (tests; an admin wiping state).
func (s *Store) DeleteTable(ctx context.Context) error {
	_, err := s.svc.DeleteTable(ctx, s.table, nil)
	if err != nil && statusOf(err) != http.StatusNotFound {
		return fmt.Errorf("tablestorage: delete table %s: %w", s.table, err)
	}
	s.mu.Lock()
	s.counters = map[string]*shard{}
	s.mu.Unlock()
	return nil
}

func hasCode(err error, code aztables.TableErrorCode) bool {
	var re *azcore.ResponseError
	return errors.As(err, &re) && re.ErrorCode == string(code)
}

func statusOf(err error) int {
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}

// ETags handed out for records: "<status>|<table ETag>".
func recordETag(st state.Status, tableETag string) string { return string(st) + "|" + tableETag }

func splitETag(etag string) (state.Status, azcore.ETag, bool) {
	st, tag, ok := strings.Cut(etag, "|")
	if !ok || tag == "" || !slices.Contains(state.Statuses, state.Status(st)) {
		return "", "", false
	}
	return state.Status(st), azcore.ETag(tag), true
}

func checkRecord(r *state.Record) error {
	if err := state.ValidateRecord(r); err != nil {
		return fmt.Errorf("tablestorage: save: %w", err)
	}
	return nil
}

// Get implements state.Store.
func (s *Store) Get(ctx context.Context, entity state.Entity, id string) (*state.Record, error) {
	if checkEntity(entity) != nil || state.CheckKey("id", id) != nil {
		return nil, fmt.Errorf("tablestorage: get %s %q: %w", entity, id, state.ErrNotFound)
	}
	resp, err := s.c.GetEntity(ctx, s.partitionOf(entity, id), rowKeyOf(id), nil)
	if err != nil {
		if statusOf(err) == http.StatusNotFound {
			return nil, fmt.Errorf("tablestorage: get %s %q: %w", entity, id, state.ErrNotFound)
		}
		return nil, fmt.Errorf("tablestorage: get %s %q: %w", entity, id, err)
	}
	r, _, err := recordFrom(resp.Value)
	if err != nil {
		return nil, fmt.Errorf("tablestorage: get %s %q: %w", entity, id, err)
	}
	r.ETag = recordETag(r.Status, string(resp.ETag))
	return r, nil
}

// Save implements state.Store.
func (s *Store) Save(ctx context.Context, rec *state.Record) error {
	if err := checkRecord(rec); err != nil {
		return err
	}
	var old state.Status
	var ifMatch azcore.ETag
	if rec.ETag != "" {
		var ok bool
		if old, ifMatch, ok = splitETag(rec.ETag); !ok {
			return fmt.Errorf("tablestorage: save %s %q: ETag %q is not one of this store's: %w", rec.Entity, rec.ID, rec.ETag, state.ErrConflict)
		}
	}
	updatedAt := time.Now().UTC().Truncate(tick)
	body, err := recordEntity(rec, s.partitionOf(rec.Entity, rec.ID), updatedAt)
	if err != nil {
		return fmt.Errorf("tablestorage: save %s %q: %w", rec.Entity, rec.ID, err)
	}
	if rec.ETag != "" && old == rec.Status {
		// No count changes: the record alone.
		resp, err := s.c.UpdateEntity(ctx, body, &aztables.UpdateEntityOptions{IfMatch: &ifMatch, UpdateMode: aztables.UpdateModeReplace})
		if err != nil {
			if st := statusOf(err); st == http.StatusPreconditionFailed || st == http.StatusNotFound {
				return fmt.Errorf("tablestorage: save %s %q: stored version differs: %w", rec.Entity, rec.ID, state.ErrConflict)
			}
			return fmt.Errorf("tablestorage: save %s %q: %w", rec.Entity, rec.ID, err)
		}
		rec.ETag, rec.UpdatedAt = recordETag(rec.Status, string(resp.ETag)), updatedAt
		return nil
	}
	return s.saveCounted(ctx, rec, body, old, ifMatch, updatedAt)
}

// partitionOf is the partition of a record.
func (s *Store) partitionOf(entity state.Entity, id string) string {
	return recordPartition(entity, s.placement().shardOf(id))
}

func (s *Store) shardFor(entity state.Entity, id string) *shard {
	n, k := s.placement().place(id)
	key := fmt.Sprintf("%s/%d/%d", entity, n, k)
	s.mu.Lock()
	defer s.mu.Unlock()
	sh := s.counters[key]
	if sh == nil {
		sh = &shard{pk: recordPartition(entity, n), rk: counterRowKey(n, k)}
		s.counters[key] = sh
	}
	return sh
}

func (s *Store) loadShard(ctx context.Context, sh *shard) error {
	resp, err := s.c.GetEntity(ctx, sh.pk, sh.rk, nil)
	switch {
	case statusOf(err) == http.StatusNotFound:
		sh.exists, sh.etag, sh.n = false, "", map[state.Status]int64{}
	case err != nil:
		return fmt.Errorf("read counter %s %s: %w", sh.pk, sh.rk, err)
	default:
		n, _, err := countersFrom(resp.Value)
		if err != nil {
			return err
		}
		sh.exists, sh.etag, sh.n = true, resp.ETag, n
	}
	sh.loaded = true
	return nil
}

// saveCounted writes the record and its counter shard in one transaction.
func (s *Store) saveCounted(ctx context.Context, rec *state.Record, body []byte, old state.Status, ifMatch azcore.ETag, updatedAt time.Time) error {
	fail := func(err error) error { return fmt.Errorf("tablestorage: save %s %q: %w", rec.Entity, rec.ID, err) }
	conflict := func() error {
		return fail(fmt.Errorf("stored version differs: %w", state.ErrConflict))
	}
	sh := s.shardFor(rec.Entity, rec.ID)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	tableRecreated := false
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return fail(err)
		}
		if !sh.loaded {
			if err := s.loadShard(ctx, sh); err != nil {
				return fail(err)
			}
		}
		next := make(map[state.Status]int64, len(state.Statuses))
		for _, st := range state.Statuses {
			next[st] = sh.n[st]
		}
		if rec.ETag != "" {
			next[old]--
		}
		next[rec.Status]++
		cbody, err := counterEntity(sh.pk, sh.rk, next)
		if err != nil {
			return fail(err)
		}
		recOp := aztables.TransactionAction{ActionType: aztables.TransactionTypeAdd, Entity: body}
		if rec.ETag != "" {
			recOp = aztables.TransactionAction{ActionType: aztables.TransactionTypeUpdateReplace, Entity: body, IfMatch: &ifMatch}
		}
		cntOp := aztables.TransactionAction{ActionType: aztables.TransactionTypeAdd, Entity: cbody}
		if sh.exists {
			etag := sh.etag
			cntOp = aztables.TransactionAction{ActionType: aztables.TransactionTypeUpdateReplace, Entity: cbody, IfMatch: &etag}
		}
		capt := &capture{}
		_, err = s.c.SubmitTransaction(context.WithValue(ctx, captureKey{}, capt), []aztables.TransactionAction{recOp, cntOp}, nil)
		results, perr := parseBatch(capt)
		if err == nil {
			if perr != nil || len(results) != 2 || results[0].etag == "" || results[1].etag == "" {
				// Written, but the answer did not say the new versions: read them.
				sh.loaded = false
				return s.afterUnreadableCommit(ctx, rec, updatedAt)
			}
			sh.n, sh.etag, sh.exists = next, azcore.ETag(results[1].etag), true
			rec.ETag, rec.UpdatedAt = recordETag(rec.Status, results[0].etag), updatedAt
			return nil
		}
		sh.loaded = false // whatever failed, read the shard again before using it
		if tableDropped(err, results, perr) && !tableRecreated {
			// The table was dropped under us (a wiped state table): make it again.
			tableRecreated = true
			if err := s.recreateTable(ctx); err != nil {
				return fail(err)
			}
			continue
		}
		if perr != nil || len(results) == 0 {
			return fail(err)
		}
		f := results[len(results)-1]
		if f.status != http.StatusConflict && f.status != http.StatusPreconditionFailed && f.status != http.StatusNotFound {
			return fail(fmt.Errorf("%d %s: %s", f.status, f.code, f.message))
		}
		who := f.index
		if who != 0 && who != 1 {
			if who, err = s.whoFailed(ctx, rec, ifMatch); err != nil {
				return fail(err)
			}
		}
		if who == 0 {
			return conflict()
		}
		if attempt >= counterRetries {
			return fail(fmt.Errorf("counter %s %s still contended after %d attempts", sh.pk, sh.rk, attempt+1))
		}
		// Another writer moved this shard: back off a little, re-read it, try again.
		d := time.Duration(rand.IntN(5*(attempt+1))+1) * time.Millisecond
		select {
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-time.After(d):
		}
	}
}

// whoFailed tells, after a conflict the service did not attribute, whether the record
// (0) or the counter (1) was the part that failed, by looking at the record.
func (s *Store) whoFailed(ctx context.Context, rec *state.Record, ifMatch azcore.ETag) (int, error) {
	resp, err := s.c.GetEntity(ctx, s.partitionOf(rec.Entity, rec.ID), rowKeyOf(rec.ID), nil)
	exists := err == nil
	if err != nil && statusOf(err) != http.StatusNotFound {
		return 0, err
	}
	if rec.ETag == "" {
		if exists {
			return 0, nil
		}
		return 1, nil
	}
	if !exists || resp.ETag != ifMatch {
		return 0, nil
	}
	return 1, nil
}

// afterUnreadableCommit learns the record's new ETag by reading it back; if another
// writer got in between, the caller's next Save conflicts, as it should.
func (s *Store) afterUnreadableCommit(ctx context.Context, rec *state.Record, updatedAt time.Time) error {
	got, err := s.Get(ctx, rec.Entity, rec.ID)
	if err != nil {
		return fmt.Errorf("tablestorage: save %s %q: written, but reading it back: %w", rec.Entity, rec.ID, err)
	}
	if got.UpdatedAt.Equal(updatedAt) {
		rec.ETag = got.ETag
	} else {
		rec.ETag = recordETag(rec.Status, "superseded")
	}
	rec.UpdatedAt = updatedAt
	return nil
}

func statusFilter(statuses []state.Status) (string, error) {
	if len(statuses) == 0 {
		return "", nil
	}
	var parts []string
	for _, st := range statuses {
		if !slices.Contains(state.Statuses, st) {
			return "", fmt.Errorf("unknown status %q", st)
		}
		parts = append(parts, "Status eq "+odataString(string(st)))
	}
	return " and (" + strings.Join(parts, " or ") + ")", nil
}

// Scan implements state.Store. Each shard's partition is read page by page in RowKey
// order and the partitions are merged, so records come in id order (decimal ids
// numerically, then other keys in order of their escaped form).
func (s *Store) Scan(ctx context.Context, entity state.Entity, statuses []state.Status, fn func(*state.Record) error) error {
	if err := checkEntity(entity); err != nil {
		return fmt.Errorf("tablestorage: scan: %w", err)
	}
	sf, err := statusFilter(statuses)
	if err != nil {
		return fmt.Errorf("tablestorage: scan %s: %w", entity, err)
	}
	type cursor struct {
		pager *runtime.Pager[aztables.ListEntitiesResponse]
		page  [][]byte
		rec   *state.Record // nil: the partition is done
		key   string
	}
	next := func(c *cursor) error {
		for len(c.page) == 0 {
			if !c.pager.More() {
				c.rec = nil
				return nil
			}
			page, err := c.pager.NextPage(ctx)
			if err != nil {
				if hasCode(err, aztables.TableNotFound) {
					c.rec = nil
					return nil
				}
				return err
			}
			c.page = page.Entities
		}
		r, etag, err := recordFrom(c.page[0])
		c.page = c.page[1:]
		if err != nil {
			return err
		}
		r.ETag = recordETag(r.Status, etag)
		c.rec, c.key = r, rowKeyOf(r.ID)
		return nil
	}
	// Pages of about 1000 records in all, as one partition's pages would be.
	shards := s.placement().shards
	top := int32(max(50, (1000+shards-1)/shards))
	cursors := make([]*cursor, shards)
	for p := range cursors {
		filter := "PartitionKey eq " + odataString(recordPartition(entity, p)) + " and RowKey lt " + odataString(recordsEnd) + sf
		c := &cursor{pager: s.c.NewListEntitiesPager(&aztables.ListEntitiesOptions{Filter: &filter, Top: &top})}
		if err := next(c); err != nil {
			return fmt.Errorf("tablestorage: scan %s: %w", entity, err)
		}
		cursors[p] = c
	}
	for {
		var first *cursor
		for _, c := range cursors {
			if c.rec != nil && (first == nil || c.key < first.key) {
				first = c
			}
		}
		if first == nil {
			return nil
		}
		r := first.rec
		if err := next(first); err != nil {
			return fmt.Errorf("tablestorage: scan %s: %w", entity, err)
		}
		if err := fn(r); err != nil {
			return err
		}
	}
}

// partitionsOf is the filter for every record partition of entity e.
func partitionsOf(e state.Entity) string {
	return "PartitionKey ge " + odataString(string(e)+"-") + " and PartitionKey lt " + odataString(string(e)+".")
}

// Counts implements state.Store: the sum of each entity's counter shards, read in
// parallel (one small range query per entity).
func (s *Store) Counts(ctx context.Context) (state.Counts, error) {
	out := state.Counts{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make([]error, len(state.Entities))
	for i, e := range state.Entities {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := s.countEntity(ctx, e)
			if err != nil {
				errs[i] = fmt.Errorf("tablestorage: counts %s: %w", e, err)
				return
			}
			mu.Lock()
			out[e] = n
			mu.Unlock()
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

func (s *Store) countEntity(ctx context.Context, e state.Entity) (map[state.Status]int, error) {
	n := map[state.Status]int{}
	for _, st := range state.Statuses {
		n[st] = 0
	}
	filter := partitionsOf(e) + " and RowKey ge " + odataString(counterPrefix) +
		" and RowKey lt " + odataString(counterPrefix[:len(counterPrefix)-1]+".")
	pager := s.c.NewListEntitiesPager(&aztables.ListEntitiesOptions{Filter: &filter})
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			if hasCode(err, aztables.TableNotFound) {
				return n, nil
			}
			return nil, err
		}
		for _, b := range page.Entities {
			c, _, err := countersFrom(b)
			if err != nil {
				return nil, err
			}
			for _, st := range state.Statuses {
				n[st] += int(c[st])
			}
		}
	}
	return n, nil
}

// GetDoc implements state.Store.
func (s *Store) GetDoc(ctx context.Context, kind, key string) (*state.Doc, error) {
	if state.CheckKey("doc kind", kind) != nil || state.CheckKey("doc key", key) != nil {
		return nil, fmt.Errorf("tablestorage: get doc %s %q: %w", kind, key, state.ErrNotFound)
	}
	resp, err := s.c.GetEntity(ctx, docPartitionOf(kind), escape(key), nil)
	if err != nil {
		if statusOf(err) == http.StatusNotFound {
			return nil, fmt.Errorf("tablestorage: get doc %s %q: %w", kind, key, state.ErrNotFound)
		}
		return nil, fmt.Errorf("tablestorage: get doc %s %q: %w", kind, key, err)
	}
	d, err := docFrom(resp.Value)
	if err != nil {
		return nil, fmt.Errorf("tablestorage: get doc %s %q: %w", kind, key, err)
	}
	d.ETag = string(resp.ETag)
	return d, nil
}

// SaveDoc implements state.Store.
func (s *Store) SaveDoc(ctx context.Context, doc *state.Doc) error {
	if err := state.ValidateDoc(doc); err != nil {
		return fmt.Errorf("tablestorage: save doc: %w", err)
	}
	fail := func(err error) error { return fmt.Errorf("tablestorage: save doc %s %q: %w", doc.Kind, doc.Key, err) }
	body, err := docEntity(doc)
	if err != nil {
		return fail(err)
	}
	for attempt := 0; ; attempt++ {
		var etag azcore.ETag
		if doc.ETag == "" {
			var resp aztables.AddEntityResponse
			resp, err = s.c.AddEntity(ctx, body, nil)
			etag = resp.ETag
			if hasCode(err, aztables.EntityAlreadyExists) {
				return fail(fmt.Errorf("already stored: %w", state.ErrConflict))
			}
		} else {
			var resp aztables.UpdateEntityResponse
			ifMatch := azcore.ETag(doc.ETag)
			resp, err = s.c.UpdateEntity(ctx, body, &aztables.UpdateEntityOptions{IfMatch: &ifMatch, UpdateMode: aztables.UpdateModeReplace})
			etag = resp.ETag
			if st := statusOf(err); st == http.StatusPreconditionFailed || (st == http.StatusNotFound && !hasCode(err, aztables.TableNotFound)) {
				return fail(fmt.Errorf("stored version differs: %w", state.ErrConflict))
			}
		}
		if hasCode(err, aztables.TableNotFound) && attempt == 0 {
			if err := s.recreateTable(ctx); err != nil && !errors.Is(err, errLayoutChanged) { // docs are placed alike in every layout
				return fail(err)
			}
			continue
		}
		if err != nil {
			return fail(err)
		}
		doc.ETag = string(etag)
		return nil
	}
}

// ListDocs implements state.Store: the kind's docs, keys in byte order (newest last
// for time-stamped keys).
func (s *Store) ListDocs(ctx context.Context, kind string) ([]*state.Doc, error) {
	if state.CheckKey("doc kind", kind) != nil {
		return nil, nil
	}
	filter := "PartitionKey eq " + odataString(docPartitionOf(kind))
	pager := s.c.NewListEntitiesPager(&aztables.ListEntitiesOptions{Filter: &filter})
	var out []*state.Doc
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			if hasCode(err, aztables.TableNotFound) {
				return nil, nil
			}
			return nil, fmt.Errorf("tablestorage: list docs %s: %w", kind, err)
		}
		for _, b := range page.Entities {
			d, err := docFrom(b)
			if err != nil {
				return nil, fmt.Errorf("tablestorage: list docs %s: %w", kind, err)
			}
			out = append(out, d)
		}
	}
	slices.SortFunc(out, func(a, b *state.Doc) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}
