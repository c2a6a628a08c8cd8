package dataverse

import "context"

// Priority is a request's class when it waits for one of the client's slots (the
// concurrency x-ms-dop-hint allows): live requests go before bulk ones, so a store's
// live changes are not queued behind an import's bulk writes for the same per-user
// budget (https://learn.microsoft.com/power-apps/developer/data-platform/api-limits).
type Priority int

const (
	// Live is the default: a single event applied as it happens, a status probe.
	Live Priority = iota
	// Bulk is import work (chunks, store runs, re-syncs): it takes a free slot only
	// when no live request waits for one.
	Bulk
)

type priorityKey struct{}

// WithPriority returns ctx with the priority the client's requests made with it wait in.
func WithPriority(ctx context.Context, p Priority) context.Context {
	return context.WithValue(ctx, priorityKey{}, p)
}

// PriorityOf returns ctx's priority (Live when none was set).
func PriorityOf(ctx context.Context) Priority {
	return priorityOf(ctx)
}

func priorityOf(ctx context.Context) Priority {
	if p, ok := ctx.Value(priorityKey{}).(Priority); ok && p >= Live && p <= Bulk {
		return p
	}
	return Live
}
