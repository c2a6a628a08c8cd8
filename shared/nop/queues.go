package nop

import (
	"github.com/nopsync/nopsync/shared/queue"
	"github.com/nopsync/nopsync/shared/state"
)

// queues maps each entity to the queue its single (live) events travel on, and bulk to
// the queue of its import chunks, store runs and re-syncs: one function per queue, named
// like it, so bulk work never holds the handlers live events need.
var (
	queues = map[Entity]string{
		state.Customer: queue.Customers,
		state.Product:  queue.Products,
		state.Order:    queue.Orders,
	}
	bulkQueues = map[Entity]string{
		state.Customer: queue.CustomersBulk,
		state.Product:  queue.ProductsBulk,
		state.Order:    queue.OrdersBulk,
	}
)

// Queue returns the queue entity's single events travel on.
func Queue(e Entity) (string, bool) {
	q, ok := queues[e]
	return q, ok
}

// BulkQueue returns the queue entity's chunks (import arrays, store runs, re-syncs)
// travel on.
func BulkQueue(e Entity) (string, bool) {
	q, ok := bulkQueues[e]
	return q, ok
}

// EntityQueues returns both of entity's queues, the live one first (nil for an unknown
// entity).
func EntityQueues(e Entity) []string {
	q, ok := queues[e]
	if !ok {
		return nil
	}
	return []string{q, bulkQueues[e]}
}

// RequestQueue returns the queue a request of n events of entity goes to: a single event
// is live and goes to the entity's queue; an array (an import, a batch of changes) to
// its bulk queue.
func RequestQueue(e Entity, n int) (string, bool) {
	if n > 1 {
		return BulkQueue(e)
	}
	return Queue(e)
}

// QueueEntity returns the entity whose events travel on queue name (live or bulk).
func QueueEntity(name string) (Entity, bool) {
	for _, m := range []map[Entity]string{queues, bulkQueues} {
		for e, q := range m {
			if q == name {
				return e, true
			}
		}
	}
	return "", false
}

// IsBulkQueue says whether name is an entity's bulk queue.
func IsBulkQueue(name string) bool {
	for _, q := range bulkQueues {
		if q == name {
			return true
		}
	}
	return false
}

// Queues lists every entity queue, the live ones in state.Entities order, then the bulk
// ones in the same order.
func Queues() []string {
	out := make([]string, 0, len(queues)+len(bulkQueues))
	for _, m := range []map[Entity]string{queues, bulkQueues} {
		for _, e := range state.Entities {
			if q, ok := m[e]; ok {
				out = append(out, q)
			}
		}
	}
	return out
}
