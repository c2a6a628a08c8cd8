package statetest

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"

	"github.com/nopsync/nopsync/shared/state"
)

// SaveDocs pinned down here, as SaveMany is in many.go:
//   - each doc's result is SaveDoc's: a conflicting doc (stale ETag, create of an
//     existing doc, ETag of a missing one) gets ErrConflict and is left as stored, while
//     every other doc of the batch, of the same kind or not, is saved; an invalid doc
//     gets an error that is not ErrConflict;
//   - more docs of one kind than one transaction holds are all saved;
//   - the same doc twice in one batch: as two SaveDocs one after the other;
//   - writers creating the same keys at once: each key is created by exactly one.

func docsTests() []suiteTest {
	return []suiteTest{
		{"DocsRoundTrip", testDocsRoundTrip},
		{"DocsConflictsInsideABatch", testDocsConflicts},
		{"DocsSameDocTwice", testDocsTwice},
		{"DocsConcurrentCreates", testDocsConcurrent},
	}
}

func saveDocs(t *testing.T, s state.Store, docs []*state.Doc) []error {
	t.Helper()
	errs := s.SaveDocs(ctxT(t), docs)
	if len(errs) != len(docs) {
		t.Fatalf("SaveDocs of %d docs returned %d results", len(docs), len(errs))
	}
	return errs
}

func expectDoc(t *testing.T, s state.Store, want *state.Doc) {
	t.Helper()
	got, err := s.GetDoc(ctxT(t), want.Kind, want.Key)
	if err != nil {
		t.Fatalf("GetDoc %s %q: %v", want.Kind, want.Key, err)
	}
	if !bytes.Equal(got.Value, want.Value) || got.ETag != want.ETag {
		t.Fatalf("doc %s %q: value %q ETag %q, want %q ETag %q", want.Kind, want.Key, got.Value, got.ETag, want.Value, want.ETag)
	}
}

// testDocsRoundTrip saves 250 docs of one kind (more than one transaction holds) and a
// few of others in one call, then updates them all from the ETags it returned.
func testDocsRoundTrip(t *testing.T, newStore func(t *testing.T) state.Store) {
	s := newStore(t)
	var docs []*state.Doc
	for i := range 250 {
		docs = append(docs, &state.Doc{Kind: "productnumber", Key: fmt.Sprintf("sku-%03d", i), Value: []byte("1/" + strconv.Itoa(i))})
	}
	docs = append(docs, &state.Doc{Kind: "run", Key: "2026-12-04", Value: bytes.Repeat([]byte("r"), 70<<10)},
		&state.Doc{Kind: "autosync", Key: "lease", Value: nil})
	for i, err := range saveDocs(t, s, docs) {
		if err != nil {
			t.Fatalf("SaveDocs: doc %d (%s %q): %v", i, docs[i].Kind, docs[i].Key, err)
		}
		if docs[i].ETag == "" {
			t.Fatalf("SaveDocs left doc %q without an ETag", docs[i].Key)
		}
	}
	for _, d := range docs {
		expectDoc(t, s, d)
	}
	list, err := s.ListDocs(ctxT(t), "productnumber")
	if err != nil || len(list) != 250 {
		t.Fatalf("ListDocs: %d docs, %v; want 250", len(list), err)
	}
	for _, d := range docs {
		d.Value = append(d.Value, '+')
	}
	for i, err := range saveDocs(t, s, docs) {
		if err != nil {
			t.Fatalf("second SaveDocs: doc %d (%s %q): %v", i, docs[i].Kind, docs[i].Key, err)
		}
	}
	for _, d := range docs {
		expectDoc(t, s, d)
	}
	if errs := saveDocs(t, s, nil); len(errs) != 0 {
		t.Fatalf("SaveDocs(nil) = %v", errs)
	}
}

func testDocsConflicts(t *testing.T, newStore func(t *testing.T) state.Store) {
	s := newStore(t)
	var stored []*state.Doc
	for i := range 30 {
		d := &state.Doc{Kind: "productnumber", Key: "k" + strconv.Itoa(i), Value: []byte("v1")}
		if err := s.SaveDoc(ctxT(t), d); err != nil {
			t.Fatal(err)
		}
		stored = append(stored, d)
	}
	// Make the ETags of k0, k5, ... stale: another writer saves them.
	stale := map[string]string{}
	for i := 0; i < 30; i += 5 {
		stale[stored[i].Key] = stored[i].ETag
		stored[i].Value = []byte("other")
		if err := s.SaveDoc(ctxT(t), stored[i]); err != nil {
			t.Fatal(err)
		}
	}
	var batch []*state.Doc
	for _, d := range stored {
		b := &state.Doc{Kind: d.Kind, Key: d.Key, Value: []byte("v2"), ETag: d.ETag}
		if e, ok := stale[d.Key]; ok {
			b.ETag = e
		}
		batch = append(batch, b)
	}
	dup := &state.Doc{Kind: "productnumber", Key: "k3", Value: []byte("dup")}       // create of an existing doc
	missing := &state.Doc{Kind: "productnumber", Key: "gone", ETag: stored[1].ETag} // an ETag for a doc that is not there
	fresh := &state.Doc{Kind: "productnumber", Key: "new", Value: []byte("new")}    // a create that goes through
	other := &state.Doc{Kind: "settings", Key: "k3", Value: []byte("another kind")} // same key, another kind
	bad := &state.Doc{Kind: "productnumber", Key: "", Value: []byte("no key")}      // invalid
	batch = append(batch, dup, missing, fresh, other, bad)

	errs := saveDocs(t, s, batch)
	for i, d := range batch {
		err := errs[i]
		_, isStale := stale[d.Key]
		switch {
		case d == dup || d == missing || (isStale && d.Kind == "productnumber" && i < 30):
			if !errors.Is(err, state.ErrConflict) {
				t.Errorf("%s %q: %v, want ErrConflict", d.Kind, d.Key, err)
			}
		case d == bad:
			if err == nil || errors.Is(err, state.ErrConflict) {
				t.Errorf("empty key: %v, want an error other than ErrConflict", err)
			}
		default:
			if err != nil {
				t.Errorf("%s %q: %v (another doc's conflict must not stop it)", d.Kind, d.Key, err)
				continue
			}
			expectDoc(t, s, d)
		}
	}
	for i := 0; i < 30; i += 5 {
		expectDoc(t, s, stored[i]) // the conflicting docs are left as stored
	}
	expectDoc(t, s, batch[3]) // the refused create did not replace k3's update
	if _, err := s.GetDoc(ctxT(t), "productnumber", "gone"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("gone (update of a missing doc): GetDoc = %v, want ErrNotFound", err)
	}
}

func testDocsTwice(t *testing.T, newStore func(t *testing.T) state.Store) {
	s := newStore(t)
	// One pointer twice: a create, then an update from the version the create made.
	d := &state.Doc{Kind: "productnumber", Key: "twice", Value: []byte("1")}
	if errs := saveDocs(t, s, []*state.Doc{d, d}); errs[0] != nil || errs[1] != nil {
		t.Fatalf("the same doc twice: %v", errs)
	}
	expectDoc(t, s, d)
	// Two copies from one version: the second conflicts, as two SaveDocs would.
	a, b := *d, *d
	a.Value, b.Value = []byte("a"), []byte("b")
	errs := saveDocs(t, s, []*state.Doc{&a, &b})
	if errs[0] != nil || !errors.Is(errs[1], state.ErrConflict) {
		t.Fatalf("two copies of one version: %v, want nil then ErrConflict", errs)
	}
	expectDoc(t, s, &a)
	// Two creates of one key: the second conflicts.
	c1 := &state.Doc{Kind: "productnumber", Key: "claimed", Value: []byte("1")}
	c2 := &state.Doc{Kind: "productnumber", Key: "claimed", Value: []byte("2")}
	errs = saveDocs(t, s, []*state.Doc{c1, c2})
	if errs[0] != nil || !errors.Is(errs[1], state.ErrConflict) {
		t.Fatalf("two creates of one key: %v, want nil then ErrConflict", errs)
	}
	expectDoc(t, s, c1)
}

// testDocsConcurrentCreates: writers create overlapping ranges of keys at once (as
// instances claiming product numbers do). Each key ends with exactly one creator, the
// one whose value is stored.
func testDocsConcurrent(t *testing.T, newStore func(t *testing.T) state.Store) {
	s := newStore(t)
	const keys, writers = 150, 4
	var wg sync.WaitGroup
	var mu sync.Mutex
	won := map[string][]string{}
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var batch []*state.Doc
			for k := w * 20; k < w*20+keys-60; k++ {
				batch = append(batch, &state.Doc{Kind: "productnumber", Key: "sku" + strconv.Itoa(k), Value: []byte("writer " + strconv.Itoa(w))})
			}
			for i, err := range s.SaveDocs(ctxT(t), batch) {
				switch {
				case err == nil:
					mu.Lock()
					won[batch[i].Key] = append(won[batch[i].Key], string(batch[i].Value))
					mu.Unlock()
				case !errors.Is(err, state.ErrConflict):
					t.Errorf("SaveDocs %q: %v", batch[i].Key, err)
				}
			}
		}()
	}
	wg.Wait()
	for k := 0; k < 3*20+keys-60; k++ {
		key := "sku" + strconv.Itoa(k)
		w := won[key]
		if len(w) != 1 {
			t.Fatalf("%s created by %d writers (%v), want exactly one", key, len(w), w)
		}
		got, err := s.GetDoc(ctxT(t), "productnumber", key)
		if err != nil || string(got.Value) != w[0] {
			t.Fatalf("%s: stored %v (%v), but %q was told it created it", key, got, err, w[0])
		}
	}
}
