package nopdb

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nopsync/nopsync/shared/nop"
)

// The three drivers hand back the same nopCommerce column in different Go types (a
// bool column is bool on PostgreSQL, int64 on MySQL's tinyint(1), bool on SQL Server's
// bit; a decimal is a string or bytes), so rows are scanned into these.

// nbool is a nullable boolean column.
type nbool struct {
	V, Valid bool
}

func (b *nbool) Scan(v any) error {
	b.Valid = true
	switch x := v.(type) {
	case nil:
		b.V, b.Valid = false, false
	case bool:
		b.V = x
	case int64:
		b.V = x != 0
	case []byte:
		switch {
		case len(x) == 1 && (x[0] == 0 || x[0] == 1): // MySQL bit(1)
			b.V = x[0] == 1
		default:
			return b.parse(string(x))
		}
	case string:
		return b.parse(x)
	default:
		return fmt.Errorf("nopdb: can't read %T as a boolean", v)
	}
	return nil
}

func (b *nbool) parse(s string) error {
	v, err := strconv.ParseBool(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("nopdb: can't read %q as a boolean", s)
	}
	b.V = v
	return nil
}

// nmoney is a nullable decimal(18,4) column, read exactly (never through a float).
type nmoney struct {
	V     nop.Money
	Valid bool
}

func (m *nmoney) Scan(v any) error {
	var s string
	switch x := v.(type) {
	case nil:
		m.V, m.Valid = nop.Money{}, false
		return nil
	case []byte:
		s = string(x)
	case string:
		s = x
	case int64:
		m.V, m.Valid = nop.MoneyFromInt(x), true
		return nil
	case float64: // not expected from any of the drivers for decimal columns
		s = strconv.FormatFloat(x, 'f', 4, 64)
	default:
		return fmt.Errorf("nopdb: can't read %T as a decimal", v)
	}
	mv, err := parseDecimal(s)
	if err != nil {
		return err
	}
	m.V, m.Valid = mv, true
	return nil
}

// parseDecimal reads the text of a decimal column: nop.ParseMoney after trimming
// trailing fraction zeros beyond 4 digits ("19.990000" from a wider column).
func parseDecimal(s string) (nop.Money, error) {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '.'); i >= 0 {
		for len(s)-i-1 > 4 && strings.HasSuffix(s, "0") {
			s = s[:len(s)-1]
		}
		s = strings.TrimSuffix(s, ".")
	}
	m, err := nop.ParseMoney(s)
	if err != nil {
		return nop.Money{}, fmt.Errorf("nopdb: decimal %q: %w", s, err)
	}
	return m, nil
}

// utc reads a nopCommerce *Utc column: the wall clock is UTC whatever location the
// driver attached.
func utc(t time.Time) time.Time {
	return time.Date(t.Year(), t.Month(), t.Day(), t.Hour(), t.Minute(), t.Second(), t.Nanosecond(), time.UTC)
}

// str is a nullable string column as docs/events.md's "string or null".
func str(s sql.NullString) *string {
	if !s.Valid {
		return nil
	}
	v := s.String
	return &v
}

// queryAll runs query and scans each of its rows with scan, closing the rows on every
// path. An error from the query, a scan or the iteration (rows.Err) is returned as is.
func queryAll[T any](ctx context.Context, q querier, scan func(*sql.Rows, *T) error, query string, args ...any) ([]T, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		var v T
		if err := scan(rows, &v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// scanPair scans a row of two ids.
func scanPair(rows *sql.Rows, p *[2]int64) error { return rows.Scan(&p[0], &p[1]) }
