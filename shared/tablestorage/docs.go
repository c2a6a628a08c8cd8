package tablestorage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"

	"github.com/nopsync/nopsync/shared/state"
)

// docItem is one doc of a SaveDocs on its way into a transaction.
type docItem struct {
	i    int
	doc  *state.Doc
	body []byte
}

// SaveDocs implements state.Store: the docs of one kind share a partition, so they are
// written in entity-group transactions of up to 100 operations (see many.go). A
// transaction is atomic: when one of its docs conflicts, the service names it and
// refuses the whole transaction; that doc gets state.ErrConflict and the others are
// sent again without it.
func (s *Store) SaveDocs(ctx context.Context, docs []*state.Doc) []error {
	errs := make([]error, len(docs))
	// Rounds: a doc saved twice goes in a later round than its first save, so the second
	// sees the first (a transaction can't hold one row twice).
	var rounds [][]*docItem
	round := map[string]int{}
	for i, doc := range docs {
		if err := state.ValidateDoc(doc); err != nil {
			errs[i] = fmt.Errorf("tablestorage: save doc: %w", err)
			continue
		}
		key := docPartitionOf(doc.Kind) + "\x00" + escape(doc.Key)
		r := round[key]
		round[key] = r + 1
		if r == len(rounds) {
			rounds = append(rounds, nil)
		}
		rounds[r] = append(rounds[r], &docItem{i: i, doc: doc})
	}
	for _, items := range rounds {
		byPart := map[string][]*docItem{}
		var parts []string
		for _, it := range items {
			body, err := docEntity(it.doc)
			if err != nil {
				errs[it.i] = fmt.Errorf("tablestorage: save doc %s %q: %w", it.doc.Kind, it.doc.Key, err)
				continue
			}
			it.body = body
			pk := docPartitionOf(it.doc.Kind)
			if byPart[pk] == nil {
				parts = append(parts, pk)
			}
			byPart[pk] = append(byPart[pk], it)
		}
		var txs [][]*docItem
		for _, pk := range parts {
			txs = append(txs, splitDocTx(byPart[pk])...)
		}
		_ = s.parallel(ctx, len(txs), func(ctx context.Context, t int) error {
			s.submitDocs(ctx, txs[t], errs)
			return nil
		})
	}
	return errs
}

// splitDocTx cuts one partition's docs into transactions within the limits.
func splitDocTx(items []*docItem) [][]*docItem {
	var out [][]*docItem
	var cur []*docItem
	size := 0
	for _, it := range items {
		n := len(it.body) + txOpOverhead
		if len(cur) > 0 && (len(cur)+1 > maxTxOps || size+n > maxTxBytes) {
			out = append(out, cur)
			cur, size = nil, 0
		}
		cur = append(cur, it)
		size += n
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// submitDocs writes one transaction's docs (one partition), setting errs of each.
func (s *Store) submitDocs(ctx context.Context, items []*docItem, errs []error) {
	fail := func(it *docItem, err error) {
		errs[it.i] = fmt.Errorf("tablestorage: save doc %s %q: %w", it.doc.Kind, it.doc.Key, err)
	}
	tableRecreated := false
	for len(items) > 0 {
		if len(items) == 1 {
			// One doc: SaveDoc's single request says the same in fewer bytes.
			errs[items[0].i] = s.SaveDoc(ctx, items[0].doc)
			return
		}
		if err := ctx.Err(); err != nil {
			for _, it := range items {
				fail(it, err)
			}
			return
		}
		ops := make([]aztables.TransactionAction, 0, len(items))
		for _, it := range items {
			if it.doc.ETag == "" {
				ops = append(ops, aztables.TransactionAction{ActionType: aztables.TransactionTypeAdd, Entity: it.body})
			} else {
				etag := azcore.ETag(it.doc.ETag)
				ops = append(ops, aztables.TransactionAction{ActionType: aztables.TransactionTypeUpdateReplace, Entity: it.body, IfMatch: &etag})
			}
		}
		results, perr, err := s.submit(ctx, ops)
		if err == nil {
			if !versionsTold(results, perr, len(ops)) {
				// Written, but the answer did not say the new versions: read them.
				for _, it := range items {
					errs[it.i] = s.docAfterUnreadableCommit(ctx, it.doc)
				}
				return
			}
			for k, it := range items {
				it.doc.ETag = results[k].etag
			}
			return
		}
		if tableDropped(err, results, perr) && !tableRecreated {
			// The table was dropped under us (a wiped state table): make it again. Docs
			// are placed alike in every layout.
			tableRecreated = true
			if err := s.recreateTable(ctx); err != nil && !errors.Is(err, errLayoutChanged) {
				for _, it := range items {
					fail(it, err)
				}
				return
			}
			continue
		}
		if perr != nil || len(results) == 0 {
			for _, it := range items {
				fail(it, fmt.Errorf("transaction of %d docs: %w", len(items), err))
			}
			return
		}
		f := results[len(results)-1]
		conflict := f.status == http.StatusConflict || f.status == http.StatusPreconditionFailed ||
			(f.status == http.StatusNotFound && f.code != string(aztables.TableNotFound))
		if !conflict {
			for _, it := range items {
				fail(it, fmt.Errorf("transaction of %d docs: %d %s: %s", len(items), f.status, f.code, f.message))
			}
			return
		}
		if f.index < 0 || f.index >= len(items) {
			// A conflict the service did not attribute: each doc on its own. Nothing of
			// the transaction was written.
			for _, it := range items {
				errs[it.i] = s.SaveDoc(ctx, it.doc)
			}
			return
		}
		it := items[f.index]
		if it.doc.ETag == "" {
			fail(it, fmt.Errorf("already stored: %w", state.ErrConflict))
		} else {
			fail(it, fmt.Errorf("stored version differs: %w", state.ErrConflict))
		}
		items = slices.Delete(items, f.index, f.index+1)
	}
}

// docAfterUnreadableCommit learns a doc's new ETag by reading it back. If another
// writer got in between (the value read is not the one written), the doc is given an
// ETag no stored version has, so the caller's next save conflicts, as it should.
func (s *Store) docAfterUnreadableCommit(ctx context.Context, doc *state.Doc) error {
	got, err := s.GetDoc(ctx, doc.Kind, doc.Key)
	if err != nil {
		return fmt.Errorf("tablestorage: save doc %s %q: written, but reading it back: %w", doc.Kind, doc.Key, err)
	}
	if bytes.Equal(got.Value, doc.Value) {
		doc.ETag = got.ETag
	} else {
		doc.ETag = `W/"superseded"`
	}
	return nil
}
