package tablestorage

import (
	"context"
	"errors"
	"testing"

	"github.com/nopsync/nopsync/shared/state"
)

// TestTableDropped: someone deletes the state table while the app runs (a wiped state
// table). Reads see an empty store; writes make the table again and carry on; versions
// from before the wipe conflict.
func TestTableDropped(t *testing.T) {
	s := newTestStore(t, Options{})
	ctx := context.Background()
	old := &state.Record{Entity: state.Customer, ID: "1", Status: state.Synced}
	if err := s.Save(ctx, old); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveDoc(ctx, &state.Doc{Kind: "autosync", Key: "last", Value: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	// Drop it behind the store's back (its counter cache still believes in the old rows).
	if _, err := s.svc.DeleteTable(ctx, s.table, nil); err != nil {
		t.Fatal(err)
	}

	if _, err := s.Get(ctx, state.Customer, "1"); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("Get after drop: %v, want ErrNotFound", err)
	}
	if _, err := s.GetDoc(ctx, "autosync", "last"); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("GetDoc after drop: %v, want ErrNotFound", err)
	}
	n := 0
	if err := s.Scan(ctx, state.Customer, nil, func(*state.Record) error { n++; return nil }); err != nil || n != 0 {
		t.Fatalf("Scan after drop: %d records, %v", n, err)
	}
	if docs, err := s.ListDocs(ctx, "autosync"); err != nil || len(docs) != 0 {
		t.Fatalf("ListDocs after drop: %v, %v", docs, err)
	}
	c, err := s.Counts(ctx)
	if err != nil || c[state.Customer][state.Synced] != 0 {
		t.Fatalf("Counts after drop: %v, %v", c, err)
	}

	stale := *old
	stale.Status = state.Failed
	if err := s.Save(ctx, &stale); !errors.Is(err, state.ErrConflict) {
		t.Fatalf("Save with a pre-drop ETag: %v, want ErrConflict", err)
	}
	fresh := &state.Record{Entity: state.Customer, ID: "1", Status: state.Pending}
	if err := s.Save(ctx, fresh); err != nil {
		t.Fatalf("create after drop: %v", err)
	}
	if err := s.SaveDoc(ctx, &state.Doc{Kind: "autosync", Key: "last", Value: []byte("y")}); err != nil {
		t.Fatalf("SaveDoc after drop: %v", err)
	}
	fresh.Status = state.Synced
	if err := s.Save(ctx, fresh); err != nil {
		t.Fatal(err)
	}
	c, err = s.Counts(ctx)
	if err != nil || c[state.Customer][state.Synced] != 1 || c[state.Customer][state.Pending] != 0 {
		t.Fatalf("Counts after starting over: %v, %v", c, err)
	}
}

// A dropped table is made again with the layout row of the store that makes it, so an
// instance that opens it later places records where this one looks; a store that finds
// another instance's row there follows it, and the write placed by the old one is
// refused (sent again, it is placed by the new).
func TestTableDroppedKeepsItsLayout(t *testing.T) {
	ctx := context.Background()
	s := newHashLayoutStore(t, 4)
	if err := s.Save(ctx, &state.Record{Entity: state.Customer, ID: "1", Status: state.Synced}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.svc.DeleteTable(ctx, s.table, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Save(ctx, &state.Record{Entity: state.Customer, ID: "2", Status: state.Synced}); err != nil {
		t.Fatalf("create after drop: %v", err)
	}
	later, err := NewFromConnectionString(ctx, connectionString(t), Options{Table: s.Table()})
	if err != nil {
		t.Fatal(err)
	}
	if got := later.placement(); got != (layout{shards: 4}) {
		t.Fatalf("a store opened after the table was made again places by %v, want %v", got, layout{shards: 4})
	}
	if r, err := later.Get(ctx, state.Customer, "2"); err != nil || r.Status != state.Synced {
		t.Fatalf("record saved after the drop, read by a later store: %v %v", r, err)
	}

	// Dropped again, and made again by another instance (by blocks) first.
	if _, err := s.svc.DeleteTable(ctx, s.table, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.svc.CreateTable(ctx, s.table, nil); err != nil {
		t.Fatal(err)
	}
	blocks := layout{shards: 16, block: blockSize}
	if changed, err := later.loadLayout(ctx, blocks); err != nil || !changed {
		t.Fatalf("another instance writing its layout row: changed %v, %v", changed, err)
	}
	if err := s.recreateTable(ctx); !errors.Is(err, errLayoutChanged) || s.placement() != blocks {
		t.Fatalf("recreateTable on a table another instance made: %v, placement %v; want errLayoutChanged and %v", err, s.placement(), blocks)
	}
	if err := s.Save(ctx, &state.Record{Entity: state.Customer, ID: "3", Status: state.Synced}); err != nil {
		t.Fatal(err)
	}
	if r, err := later.Get(ctx, state.Customer, "3"); err != nil || r.Status != state.Synced {
		t.Fatalf("record saved by the store that followed, read by the other: %v %v", r, err)
	}
}
