package tablestorage

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"

	"github.com/nopsync/nopsync/shared/internal/cut"
	"github.com/nopsync/nopsync/shared/state"
)

const (
	// chunkSize: Table Storage's limit for one binary property.
	chunkSize = 64 << 10
	// maxChunks binary properties hold state.MaxData, well inside the 1 MiB entity limit
	// with the other properties.
	maxChunks = 10
)

// The entity layout must hold what every store accepts.
var _ [maxChunks*chunkSize - state.MaxData]struct{}

// Property names of a record row. Empty values are left out (Replace removes them).
const (
	pStatus      = "Status"
	pDataverseID = "DataverseId"
	pReason      = "Reason"
	pTransient   = "Transient"
	pAttempts    = "Attempts"
	pOrderKey    = "OrderKey"
	pLastEventID = "LastEventId"
	pSyncedAt    = "SyncedAt"
	pUpdatedAt   = "UpdatedAt"
	pDataHash    = "DataHash"
	pDataLen     = "DataLen" // Data is split over D0, D1, ... (Edm.Binary, 64 KiB each)
	pDataChunk   = "D"
	pExtra       = "Extra" // JSON object
	pLeaseOwner  = "LeaseOwner"
	pLeaseUntil  = "LeaseUntil"

	pValueLen   = "ValueLen" // doc Value, split over V0, V1, ...
	pValueChunk = "V"
)

// tick is Edm.DateTime's resolution: times are cut to it so that what Save hands back
// equals what Get reads.
const tick = 100 * time.Nanosecond

func edmTime(t time.Time) aztables.EDMDateTime {
	return aztables.EDMDateTime(t.UTC().Truncate(tick))
}

func recordEntity(r *state.Record, pk string, updatedAt time.Time) ([]byte, error) {
	p := map[string]any{pStatus: string(r.Status), pUpdatedAt: edmTime(updatedAt)}
	for _, f := range []struct{ name, v string }{
		{pDataverseID, r.DataverseID}, {pOrderKey, r.OrderKey}, {pLastEventID, r.LastEventID},
		{pDataHash, r.DataHash}, {pLeaseOwner, r.LeaseOwner},
	} {
		if len(f.v) > state.MaxString {
			return nil, fmt.Errorf("%s is %d bytes long, at most %d allowed", f.name, len(f.v), state.MaxString)
		}
		if f.v != "" {
			p[f.name] = f.v
		}
	}
	if r.Reason != "" {
		p[pReason] = cut.Bytes(r.Reason, state.MaxString, "")
	}
	if r.Transient {
		p[pTransient] = true
	}
	if r.Attempts != 0 {
		if r.Attempts > math.MaxInt32 || r.Attempts < 0 {
			return nil, fmt.Errorf("attempts %d out of range", r.Attempts)
		}
		p[pAttempts] = int32(r.Attempts)
	}
	if !r.SyncedAt.IsZero() {
		p[pSyncedAt] = edmTime(r.SyncedAt)
	}
	if !r.LeaseUntil.IsZero() {
		p[pLeaseUntil] = edmTime(r.LeaseUntil)
	}
	if len(r.Extra) > 0 {
		b, err := json.Marshal(r.Extra)
		if err != nil {
			return nil, fmt.Errorf("extra: %w", err)
		}
		if len(b) > state.MaxExtra {
			return nil, fmt.Errorf("extra is %d bytes as JSON, at most %d allowed", len(b), state.MaxExtra)
		}
		p[pExtra] = string(b)
	}
	if err := putChunks(p, pDataLen, pDataChunk, r.Data); err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	return json.Marshal(aztables.EDMEntity{
		Entity:     aztables.Entity{PartitionKey: pk, RowKey: rowKeyOf(r.ID)},
		Properties: p,
	})
}

func putChunks(p map[string]any, lenName, chunkName string, b []byte) error {
	if len(b) > maxChunks*chunkSize {
		return fmt.Errorf("%d bytes, at most %d fit in a Table Storage entity", len(b), maxChunks*chunkSize)
	}
	if len(b) == 0 {
		return nil
	}
	p[lenName] = int32(len(b))
	for i := 0; i*chunkSize < len(b); i++ {
		end := min((i+1)*chunkSize, len(b))
		p[fmt.Sprintf("%s%d", chunkName, i)] = aztables.EDMBinary(b[i*chunkSize : end])
	}
	return nil
}

func getChunks(p map[string]any, lenName, chunkName string) ([]byte, error) {
	n, ok := intProp(p, lenName)
	if !ok || n == 0 {
		return nil, nil
	}
	out := make([]byte, 0, n)
	for i := 0; len(out) < n; i++ {
		c, ok := p[fmt.Sprintf("%s%d", chunkName, i)].(aztables.EDMBinary)
		if !ok || len(c) == 0 {
			return nil, fmt.Errorf("%s%d missing (have %d of %d bytes)", chunkName, i, len(out), n)
		}
		out = append(out, c...)
	}
	if len(out) != n {
		return nil, fmt.Errorf("%d bytes stored, %s says %d", len(out), lenName, n)
	}
	return out, nil
}

func strProp(p map[string]any, name string) string {
	s, _ := p[name].(string)
	return s
}

func intProp(p map[string]any, name string) (int, bool) {
	switch v := p[name].(type) {
	case int32:
		return int(v), true
	case aztables.EDMInt64:
		return int(v), true
	case float64:
		return int(v), true
	}
	return 0, false
}

func timeProp(p map[string]any, name string) time.Time {
	if v, ok := p[name].(aztables.EDMDateTime); ok {
		return time.Time(v).UTC()
	}
	return time.Time{}
}

// recordFrom decodes a record row; the caller sets ETag.
func recordFrom(b []byte) (*state.Record, string, error) {
	var e aztables.EDMEntity
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, "", fmt.Errorf("decode row: %w", err)
	}
	id, err := idOf(e.RowKey)
	if err != nil {
		return nil, "", err
	}
	p := e.Properties
	r := &state.Record{
		Entity:      entityOfPartition(e.PartitionKey),
		ID:          id,
		DataverseID: strProp(p, pDataverseID),
		Status:      state.Status(strProp(p, pStatus)),
		Reason:      strProp(p, pReason),
		OrderKey:    strProp(p, pOrderKey),
		LastEventID: strProp(p, pLastEventID),
		SyncedAt:    timeProp(p, pSyncedAt),
		UpdatedAt:   timeProp(p, pUpdatedAt),
		DataHash:    strProp(p, pDataHash),
		LeaseOwner:  strProp(p, pLeaseOwner),
		LeaseUntil:  timeProp(p, pLeaseUntil),
	}
	r.Transient, _ = p[pTransient].(bool)
	r.Attempts, _ = intProp(p, pAttempts)
	if x := strProp(p, pExtra); x != "" {
		if err := json.Unmarshal([]byte(x), &r.Extra); err != nil {
			return nil, "", fmt.Errorf("%s %q: extra: %w", r.Entity, id, err)
		}
	}
	if r.Data, err = getChunks(p, pDataLen, pDataChunk); err != nil {
		return nil, "", fmt.Errorf("%s %q: data: %w", r.Entity, id, err)
	}
	return r, e.ETag, nil
}

func counterEntity(pk, rk string, n map[state.Status]int64) ([]byte, error) {
	p := map[string]any{}
	for _, st := range state.Statuses {
		p[string(st)] = aztables.EDMInt64(n[st])
	}
	return json.Marshal(aztables.EDMEntity{Entity: aztables.Entity{PartitionKey: pk, RowKey: rk}, Properties: p})
}

func countersFrom(b []byte) (map[state.Status]int64, string, error) {
	var e aztables.EDMEntity
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, "", fmt.Errorf("decode counter row: %w", err)
	}
	n := map[state.Status]int64{}
	for _, st := range state.Statuses {
		v, _ := intProp(e.Properties, string(st))
		n[st] = int64(v)
	}
	return n, e.ETag, nil
}

func docEntity(d *state.Doc) ([]byte, error) {
	p := map[string]any{}
	if err := putChunks(p, pValueLen, pValueChunk, d.Value); err != nil {
		return nil, fmt.Errorf("value: %w", err)
	}
	return json.Marshal(aztables.EDMEntity{
		Entity:     aztables.Entity{PartitionKey: docPartitionOf(d.Kind), RowKey: escape(d.Key)},
		Properties: p,
	})
}

func docFrom(b []byte) (*state.Doc, error) {
	var e aztables.EDMEntity
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("decode doc: %w", err)
	}
	kind, err := unescape(strings.TrimPrefix(e.PartitionKey, docPartition))
	if err != nil {
		return nil, err
	}
	key, err := unescape(e.RowKey)
	if err != nil {
		return nil, err
	}
	v, err := getChunks(e.Properties, pValueLen, pValueChunk)
	if err != nil {
		return nil, fmt.Errorf("doc %s %q: %w", kind, key, err)
	}
	return &state.Doc{Kind: kind, Key: key, Value: v, ETag: e.ETag}, nil
}
