package nop

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/nopsync/nopsync/shared/queue"
)

// Limits from docs/events.md.
const (
	MaxEvents     = 1000              // events per request
	MaxEventBytes = 200 << 10         // one event, as received
	MaxBodyBytes  = 4 << 20           // one request body (intake enforces it before decoding)
	MaxIDLength   = queue.MaxIDLength // event id, UTF-16 code units (Service Bus MessageId limit)
	MaxNameLength = 400               // product name, characters (nopCommerce's column)
	maxInt32      = 1<<31 - 1         // nopCommerce ints are C# int
	minInt32      = -(1 << 31)        //
)

// ValidationError says why a request body or queue envelope was refused: which event
// (Index, -1 for the whole body) and which field (a JSON path such as
// "data.items[0].quantity", "" for the whole event or body).
type ValidationError struct {
	Index   int
	Field   string
	Message string
}

func (e *ValidationError) Error() string {
	where := "request body"
	if e.Index >= 0 {
		where = "event " + strconv.Itoa(e.Index)
	}
	if e.Field != "" {
		return fmt.Sprintf("%s: %s: %s", where, e.Field, e.Message)
	}
	return where + ": " + e.Message
}

// ErrTooLarge is matched (errors.Is) by a *TooLargeError.
var ErrTooLarge = errors.New("too large")

// TooLargeError reports an event (or body) over its size limit; intake answers 413.
type TooLargeError struct {
	Index int // event index, -1 for the whole body
	Size  int // bytes
	Limit int // bytes
}

func (e *TooLargeError) Error() string {
	if e.Index < 0 {
		return fmt.Sprintf("request body is %d bytes, over the limit of %d", e.Size, e.Limit)
	}
	return fmt.Sprintf("event %d is %d bytes, over the limit of %d", e.Index, e.Size, e.Limit)
}

// Is makes errors.Is(err, ErrTooLarge) true.
func (e *TooLargeError) Is(target error) bool { return target == ErrTooLarge }
