package state_test

import (
	"context"
	"errors"
	"testing"

	"github.com/nopsync/nopsync/shared/localstore"
	"github.com/nopsync/nopsync/shared/state"
)

// conflicting makes the first n SaveDoc calls meet another writer: it saves its own
// value first, so the caller's ETag is stale.
type conflicting struct {
	state.Store
	n int
}

func (c *conflicting) SaveDoc(ctx context.Context, doc *state.Doc) error {
	if c.n > 0 {
		c.n--
		cur, err := c.Store.GetDoc(ctx, doc.Kind, doc.Key)
		if errors.Is(err, state.ErrNotFound) {
			cur = &state.Doc{Kind: doc.Kind, Key: doc.Key}
		}
		cur.Value = append(cur.Value, '+')
		if err := c.Store.SaveDoc(ctx, cur); err != nil {
			return err
		}
	}
	return c.Store.SaveDoc(ctx, doc)
}

func TestUpdateDoc(t *testing.T) {
	ctx := context.Background()
	st, err := localstore.Open("")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	c := &conflicting{Store: st}
	appendX := func(cur []byte) ([]byte, bool) { return append(append([]byte{}, cur...), 'x'), true }

	// No doc yet: change sees nil, the doc is created.
	var seen []byte = []byte("unset")
	doc, err := state.UpdateDoc(ctx, c, "k", "a", 3, func(cur []byte) ([]byte, bool) { seen = cur; return []byte("x"), true })
	if err != nil || doc == nil || seen != nil || string(doc.Value) != "x" {
		t.Fatalf("create: %v %+v, change saw %q", err, doc, seen)
	}
	// Another writer twice, three tries: the change is applied on what that writer left.
	c.n = 2
	if doc, err = state.UpdateDoc(ctx, c, "k", "a", 3, appendX); err != nil || string(doc.Value) != "x++x" {
		t.Fatalf("after two conflicts: %v %+v", err, doc)
	}
	// More writers than tries: ErrConflict, nothing of this change saved.
	c.n = 2
	if doc, err = state.UpdateDoc(ctx, c, "k", "a", 2, appendX); !errors.Is(err, state.ErrConflict) || doc != nil {
		t.Fatalf("conflicts on every try: %v %+v", err, doc)
	}
	if got, _ := st.GetDoc(ctx, "k", "a"); string(got.Value) != "x++x++" {
		t.Fatalf("stored %q, want the other writers' changes only", got.Value)
	}
	// Declined: nothing saved.
	if doc, err = state.UpdateDoc(ctx, c, "k", "a", 1, func([]byte) ([]byte, bool) { return []byte("no"), false }); err != nil || doc != nil {
		t.Fatalf("declined: %v %+v", err, doc)
	}
}
