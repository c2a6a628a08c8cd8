package nop

import (
	"github.com/nopsync/nopsync/shared/queue"
	"github.com/nopsync/nopsync/shared/state"
)

// queues maps each entity to the queue its events travel on: one queue per entity, named
// like the function that drains it.
var queues = map[Entity]string{
	state.Customer: queue.Customers,
	state.Product:  queue.Products,
	state.Order:    queue.Orders,
}

// Queue returns the queue entity's events travel on.
func Queue(e Entity) (string, bool) {
	q, ok := queues[e]
	return q, ok
}

// QueueEntity returns the entity whose events travel on queue name.
func QueueEntity(name string) (Entity, bool) {
	for e, q := range queues {
		if q == name {
			return e, true
		}
	}
	return "", false
}

// Queues lists the entity queues, in state.Entities order.
func Queues() []string {
	out := make([]string, 0, len(queues))
	for _, e := range state.Entities {
		if q, ok := queues[e]; ok {
			out = append(out, q)
		}
	}
	return out
}
