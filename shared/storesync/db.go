package storesync

import (
	"context"
	"fmt"
	"sync"

	"github.com/nopsync/nopsync/shared/nopdb"
	"github.com/nopsync/nopsync/shared/state"
)

// DB is the Source on the store's database (nopdb.Reader). It opens the reader on first
// use and again after a failed open, so an app started while the database is down (or
// its login wrong) runs, reports the reason on its status page and reads once it can.
type DB struct {
	// Options of the reader; Connection may be left empty when ConnectionString is set.
	Options nopdb.Options
	// ConnectionString reads the connection string when the reader opens (Key Vault);
	// nil: Options.Connection.
	ConnectionString func(ctx context.Context) (string, error)

	mu sync.Mutex
	r  *nopdb.Reader
}

func (d *DB) reader(ctx context.Context) (*nopdb.Reader, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.r != nil {
		return d.r, nil
	}
	o := d.Options
	if d.ConnectionString != nil {
		c, err := d.ConnectionString(ctx)
		if err != nil {
			// The error names the secret, never its value (keyvault's errors hold no values).
			return nil, fmt.Errorf("the store database's connection string: %w", err)
		}
		o.Connection = c
	}
	r, err := nopdb.Open(ctx, o)
	if err != nil {
		return nil, err // nopdb's errors never hold the connection string
	}
	d.r = r
	return r, nil
}

// Check implements Source.
func (d *DB) Check(ctx context.Context) error {
	r, err := d.reader(ctx)
	if err != nil {
		return err
	}
	return r.Check(ctx)
}

// StoreCurrency implements Source.
func (d *DB) StoreCurrency(ctx context.Context) (string, error) {
	r, err := d.reader(ctx)
	if err != nil {
		return "", err
	}
	return r.StoreCurrency(ctx)
}

// ReadPage implements Source.
func (d *DB) ReadPage(ctx context.Context, entity state.Entity, after int64, limit int) (Page, error) {
	r, err := d.reader(ctx)
	if err != nil {
		return Page{}, err
	}
	p, err := r.ReadPage(ctx, entity, after, limit)
	if err != nil {
		return Page{}, err
	}
	out := Page{Events: p.Events, Hashes: p.Hashes, Rows: p.Rows, Last: p.Last, Done: p.Done}
	for _, f := range p.Failures {
		out.Failures = append(out.Failures, RowFailure{Entity: f.Entity, ID: f.ID, Reason: f.Reason})
	}
	return out, nil
}

// Close closes the reader, if open.
func (d *DB) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.r == nil {
		return nil
	}
	err := d.r.Close()
	d.r = nil
	return err
}
