package state

import (
	"context"
	"errors"
	"fmt"
)

// UpdateDoc reads a doc, asks change what to store instead (cur is nil when there is
// none; false leaves it as it is) and saves that with the ETag it read; when another
// writer saved it meanwhile it reads it again, tries times in all. It returns the saved
// doc, nil when change declined, or an error wrapping ErrConflict when every try
// met another writer.
func UpdateDoc(ctx context.Context, st Store, kind, key string, tries int, change func(cur []byte) ([]byte, bool)) (*Doc, error) {
	var err error
	for range tries {
		var doc *Doc
		doc, err = st.GetDoc(ctx, kind, key)
		var cur []byte
		switch {
		case errors.Is(err, ErrNotFound):
			doc = &Doc{Kind: kind, Key: key}
		case err != nil:
			return nil, fmt.Errorf("read %s/%s: %w", kind, key, err)
		default:
			cur = doc.Value
			if cur == nil {
				cur = []byte{}
			}
		}
		next, ok := change(cur)
		if !ok {
			return nil, nil
		}
		doc.Value = next
		if err = st.SaveDoc(ctx, doc); err == nil {
			return doc, nil
		}
		if !errors.Is(err, ErrConflict) {
			return nil, fmt.Errorf("save %s/%s: %w", kind, key, err)
		}
	}
	return nil, fmt.Errorf("save %s/%s: %w", kind, key, err)
}
