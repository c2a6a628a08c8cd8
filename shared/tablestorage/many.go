package tablestorage

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"

	"github.com/nopsync/nopsync/shared/state"
)

// Batched reads and writes (state.Store's GetMany and SaveMany). An entity-group
// transaction takes up to 100 operations on one partition, at most 4 MiB in all, and
// is atomic (Microsoft Learn: "Performing entity group transactions", Table service
// REST API). A record's partition holds its counter rows, so one transaction carries a
// partition's records and the counter rows they move. A query's $filter may hold at
// most 15 comparisons (Microsoft Learn: "Querying tables and entities").
const (
	maxTxOps       = 100
	maxTxBytes     = 3 << 20 // record bodies per transaction, leaving room for the envelope
	txOpOverhead   = 1 << 10 // per operation: headers and multipart framing
	maxFilterComps = 15
	// manyConcurrency bounds the round trips one GetMany or SaveMany has in flight.
	manyConcurrency = 16
)

// GetMany implements state.Store: per partition, one query per 14 comparisons of
// RowKey (PartitionKey eq takes the 15th); ids close together in a partition share a
// range comparison.
func (s *Store) GetMany(ctx context.Context, entity state.Entity, ids []string) (map[string]*state.Record, error) {
	out := make(map[string]*state.Record, len(ids))
	if checkEntity(entity) != nil {
		return out, nil
	}
	lay := s.placement()
	byPart := map[int][]string{}
	seen := make(map[string]bool, len(ids))
	for _, id := range ids {
		if seen[id] || state.CheckKey("id", id) != nil {
			continue
		}
		seen[id] = true
		n := lay.shardOf(id)
		byPart[n] = append(byPart[n], id)
	}
	var filters []string
	for n, ids := range byPart {
		pk := "PartitionKey eq " + odataString(recordPartition(entity, n))
		for _, f := range rowKeyFilters(ids, lay.near(), maxFilterComps-1) {
			filters = append(filters, pk+" and ("+f+")")
		}
	}
	var mu sync.Mutex
	err := s.parallel(ctx, len(filters), func(ctx context.Context, i int) error {
		pager := s.c.NewListEntitiesPager(&aztables.ListEntitiesOptions{Filter: &filters[i]})
		for pager.More() {
			page, err := pager.NextPage(ctx)
			if err != nil {
				if hasCode(err, aztables.TableNotFound) {
					return nil
				}
				return err
			}
			for _, b := range page.Entities {
				r, etag, err := recordFrom(b)
				if err != nil {
					return err
				}
				if !seen[r.ID] {
					continue // inside a range, not asked for
				}
				r.ETag = recordETag(r.Status, etag)
				mu.Lock()
				out[r.ID] = r
				mu.Unlock()
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("tablestorage: get %d %s records: %w", len(seen), entity, err)
	}
	return out, nil
}

// rowKeyFilters turns one partition's ids into OData conditions on RowKey of at most
// comps comparisons each. Decimal ids whose neighbours are at most near apart (layout's
// near: a few rows of the partition) become one range (two comparisons), so a chunk of
// consecutive ids costs one query per partition; the rest are "RowKey eq".
func rowKeyFilters(ids []string, near uint64, comps int) []string {
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = rowKeyOf(id)
	}
	slices.Sort(keys)
	// Segments [lo, hi] of row keys.
	type seg struct{ lo, hi string }
	var segs []seg
	for _, k := range keys {
		if n := len(segs); n > 0 && isDecimalKey(k) && isDecimalKey(segs[n-1].hi) && keyNum(k)-keyNum(segs[n-1].hi) <= near {
			segs[n-1].hi = k
			continue
		}
		segs = append(segs, seg{k, k})
	}
	var out []string
	var cur []string
	used := 0
	for _, sg := range segs {
		c, cond := 1, "RowKey eq "+odataString(sg.lo)
		if sg.lo != sg.hi {
			c, cond = 2, "(RowKey ge "+odataString(sg.lo)+" and RowKey le "+odataString(sg.hi)+")"
		}
		if used+c > comps {
			out = append(out, strings.Join(cur, " or "))
			cur, used = nil, 0
		}
		cur = append(cur, cond)
		used += c
	}
	if len(cur) > 0 {
		out = append(out, strings.Join(cur, " or "))
	}
	return out
}

func isDecimalKey(k string) bool { return len(k) == decimalWidth && k[0] >= '0' && k[0] <= '9' }

func keyNum(k string) uint64 {
	var n uint64
	for i := 0; i < len(k); i++ {
		n = n*10 + uint64(k[i]-'0')
	}
	return n
}

// parallel runs fn(0..n-1), manyConcurrency at a time; the first error is returned
// (the others still run to their end).
func (s *Store) parallel(ctx context.Context, n int, fn func(context.Context, int) error) error {
	if n == 1 {
		return fn(ctx, 0)
	}
	errs := make([]error, n)
	sem := make(chan struct{}, manyConcurrency)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			errs[i] = fn(ctx, i)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// saveItem is one record of a SaveMany on its way into a transaction.
type saveItem struct {
	i       int
	rec     *state.Record
	body    []byte
	old     state.Status // with ifMatch: the stored status
	ifMatch azcore.ETag  // "" for a create
	counter int          // the record's counter row in its partition
	counted bool         // a create or a status change: its counter row moves
}

// SaveMany implements state.Store: records are grouped by partition and written in
// entity-group transactions of up to 100 operations, with the counter rows they move.
// A transaction is atomic: when one of its records conflicts, the service names it and
// refuses the whole transaction; that record gets state.ErrConflict and the others are
// sent again without it.
func (s *Store) SaveMany(ctx context.Context, recs []*state.Record) []error {
	errs := make([]error, len(recs))
	updatedAt := time.Now().UTC().Truncate(tick)
	// Rounds: a record saved twice goes in a later round than its first save, so the
	// second sees the first (transactions can't hold one row twice).
	var rounds [][]*saveItem
	round := map[string]int{}
	for i, rec := range recs {
		it, err := s.saveItemOf(i, rec, updatedAt)
		if err != nil {
			errs[i] = err
			continue
		}
		key := string(rec.Entity) + "/" + rec.ID
		r := round[key]
		round[key] = r + 1
		if r == len(rounds) {
			rounds = append(rounds, nil)
		}
		rounds[r] = append(rounds[r], it)
	}
	for r, items := range rounds {
		if r > 0 {
			// ETags of the previous round's saves are the ifMatch of this round's.
			for _, it := range items {
				if it2, err := s.saveItemOf(it.i, it.rec, updatedAt); err == nil {
					*it = *it2
				} else {
					errs[it.i] = err
					it.rec = nil
				}
			}
			items = slices.DeleteFunc(items, func(it *saveItem) bool { return it.rec == nil })
		}
		var txs [][]*saveItem
		byPart := map[string][]*saveItem{}
		var parts []string
		for _, it := range items {
			pk := s.partitionOf(it.rec.Entity, it.rec.ID)
			if byPart[pk] == nil {
				parts = append(parts, pk)
			}
			byPart[pk] = append(byPart[pk], it)
		}
		for _, pk := range parts {
			txs = append(txs, splitTx(byPart[pk])...)
		}
		_ = s.parallel(ctx, len(txs), func(ctx context.Context, t int) error {
			s.submitItems(ctx, txs[t], updatedAt, errs)
			return nil
		})
	}
	return errs
}

func (s *Store) saveItemOf(i int, rec *state.Record, updatedAt time.Time) (*saveItem, error) {
	if err := checkRecord(rec); err != nil {
		return nil, err
	}
	it := &saveItem{i: i, rec: rec, counted: true}
	_, it.counter = s.placement().place(rec.ID)
	if rec.ETag != "" {
		var ok bool
		if it.old, it.ifMatch, ok = splitETag(rec.ETag); !ok {
			return nil, fmt.Errorf("tablestorage: save %s %q: ETag %q is not one of this store's: %w", rec.Entity, rec.ID, rec.ETag, state.ErrConflict)
		}
		it.counted = it.old != rec.Status
	}
	body, err := recordEntity(rec, s.partitionOf(rec.Entity, rec.ID), updatedAt)
	if err != nil {
		return nil, fmt.Errorf("tablestorage: save %s %q: %w", rec.Entity, rec.ID, err)
	}
	it.body = body
	return it, nil
}

// splitTx cuts one partition's items into transactions within the limits: operations
// (records plus the counter rows they move) and bytes.
func splitTx(items []*saveItem) [][]*saveItem {
	var out [][]*saveItem
	var cur []*saveItem
	counters := map[int]bool{}
	bytes := 0
	for _, it := range items {
		extra := 0
		if it.counted && !counters[it.counter] {
			extra = 1
		}
		size := len(it.body) + txOpOverhead
		if len(cur) > 0 && (len(cur)+len(counters)+1+extra > maxTxOps || bytes+size > maxTxBytes) {
			out = append(out, cur)
			cur, counters, bytes = nil, map[int]bool{}, 0
		}
		cur = append(cur, it)
		if it.counted {
			counters[it.counter] = true
		}
		bytes += size
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// submitItems writes one transaction's items (one partition), setting errs of each.
// Conflicting records are taken out one at a time, as the service names them; a
// contended counter row is read again and the transaction sent again, as in Save.
func (s *Store) submitItems(ctx context.Context, items []*saveItem, updatedAt time.Time, errs []error) {
	fallback := s.submitLocked(ctx, items, updatedAt, errs)
	// A failure the service did not attribute: each record on its own (Save sorts out
	// which one conflicts). Nothing of the transaction was written.
	for _, it := range fallback {
		errs[it.i] = s.Save(ctx, it.rec)
	}
}

func (s *Store) submitLocked(ctx context.Context, items []*saveItem, updatedAt time.Time, errs []error) (fallback []*saveItem) {
	fail := func(it *saveItem, err error) {
		errs[it.i] = fmt.Errorf("tablestorage: save %s %q: %w", it.rec.Entity, it.rec.ID, err)
	}
	// The counter rows any item may move, locked in index order (Save locks one).
	var shards []*shard
	byCounter := map[int]*shard{}
	for _, it := range items {
		if it.counted && byCounter[it.counter] == nil {
			byCounter[it.counter] = s.shardFor(it.rec.Entity, it.rec.ID)
		}
	}
	for k := range countersPerShard {
		if sh := byCounter[k]; sh != nil {
			shards = append(shards, sh)
			sh.mu.Lock()
			defer sh.mu.Unlock()
		}
	}
	tableRecreated := false
	for attempt := 0; len(items) > 0; {
		if err := ctx.Err(); err != nil {
			for _, it := range items {
				fail(it, err)
			}
			return nil
		}
		// Counter rows moved by the items still in.
		next := map[*shard]map[state.Status]int64{}
		var moved []*shard
		for _, it := range items {
			if !it.counted {
				continue
			}
			sh := byCounter[it.counter]
			if next[sh] == nil {
				if !sh.loaded {
					if err := s.loadShard(ctx, sh); err != nil {
						for _, it := range items {
							fail(it, err)
						}
						return nil
					}
				}
				n := make(map[state.Status]int64, len(state.Statuses))
				for _, st := range state.Statuses {
					n[st] = sh.n[st]
				}
				next[sh] = n
			}
			if it.ifMatch != "" {
				next[sh][it.old]--
			}
			next[sh][it.rec.Status]++
		}
		for _, sh := range shards {
			if next[sh] != nil {
				moved = append(moved, sh)
			}
		}
		// The counter rows go first: when another writer moved one, the service stops at
		// it. Azurite applies a transaction's operations one by one and undoes them when
		// one fails, at a cost that grows with the table, so a contended counter after a
		// hundred records cost it a hundred writes and their undoing.
		ops := make([]aztables.TransactionAction, 0, len(items)+len(moved))
		for _, sh := range moved {
			cbody, err := counterEntity(sh.pk, sh.rk, next[sh])
			if err != nil {
				for _, it := range items {
					fail(it, err)
				}
				return nil
			}
			if sh.exists {
				etag := sh.etag
				ops = append(ops, aztables.TransactionAction{ActionType: aztables.TransactionTypeUpdateReplace, Entity: cbody, IfMatch: &etag})
			} else {
				ops = append(ops, aztables.TransactionAction{ActionType: aztables.TransactionTypeAdd, Entity: cbody})
			}
		}
		for _, it := range items {
			if it.ifMatch == "" {
				ops = append(ops, aztables.TransactionAction{ActionType: aztables.TransactionTypeAdd, Entity: it.body})
			} else {
				etag := it.ifMatch
				ops = append(ops, aztables.TransactionAction{ActionType: aztables.TransactionTypeUpdateReplace, Entity: it.body, IfMatch: &etag})
			}
		}
		nc := len(moved) // ops[:nc] are counter rows, ops[nc:] the items
		results, perr, err := s.submit(ctx, ops)
		if err == nil {
			if !versionsTold(results, perr, len(ops)) {
				// Written, but the answer did not say the new versions: read them.
				for _, sh := range moved {
					sh.loaded = false
				}
				for _, it := range items {
					errs[it.i] = s.afterUnreadableCommit(ctx, it.rec, updatedAt)
				}
				return nil
			}
			for k, it := range items {
				it.rec.ETag, it.rec.UpdatedAt = recordETag(it.rec.Status, results[nc+k].etag), updatedAt
			}
			for k, sh := range moved {
				sh.n, sh.etag, sh.exists = next[sh], azcore.ETag(results[k].etag), true
			}
			return nil
		}
		for _, sh := range moved {
			sh.loaded = false // whatever failed, read the counter again before using it
		}
		if tableDropped(err, results, perr) && !tableRecreated {
			// The table was dropped under us (a wiped state table): make it again.
			tableRecreated = true
			if err := s.recreateTable(ctx); err != nil {
				for _, it := range items {
					fail(it, err)
				}
				return nil
			}
			continue
		}
		if perr != nil || len(results) == 0 {
			for _, it := range items {
				fail(it, fmt.Errorf("transaction of %d records in %s: %w", len(items), items[0].rec.Entity, err))
			}
			return nil
		}
		f := results[len(results)-1]
		if f.status != http.StatusConflict && f.status != http.StatusPreconditionFailed && f.status != http.StatusNotFound {
			for _, it := range items {
				fail(it, fmt.Errorf("transaction of %d records: %d %s: %s", len(items), f.status, f.code, f.message))
			}
			return nil
		}
		switch who := f.index; {
		case who >= nc && who < len(ops):
			fail(items[who-nc], fmt.Errorf("stored version differs: %w", state.ErrConflict))
			items = slices.Delete(items, who-nc, who-nc+1)
		case who >= 0 && who < nc:
			if attempt >= counterRetries {
				sh := moved[who]
				for _, it := range items {
					fail(it, fmt.Errorf("counter %s %s still contended after %d attempts", sh.pk, sh.rk, attempt+1))
				}
				return nil
			}
			attempt++
			// Another writer moved this counter row: back off a little, read it again.
			d := time.Duration(rand.IntN(5*attempt)+1) * time.Millisecond
			select {
			case <-ctx.Done():
			case <-time.After(d):
			}
		default:
			return items
		}
	}
	return nil
}
