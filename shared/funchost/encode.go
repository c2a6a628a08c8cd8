package funchost

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
)

// The encoders below build invocations the way the Functions host does (quirks included),
// so local mode drives the very same function code through the very same decoders.

// hostString is how the host sends a string value: JSON-serialised, so a string becomes a
// JSON string holding a quoted string ("\"abc\"").
func hostString(s string) json.RawMessage {
	inner, _ := json.Marshal(s)
	outer, _ := json.Marshal(string(inner))
	return outer
}

// hostNumber is how the host sends numbers in metadata: as strings ("4").
func hostNumber(n int64) json.RawMessage {
	b, _ := json.Marshal(strconv.FormatInt(n, 10))
	return b
}

func sys(method string, now time.Time) json.RawMessage {
	b, _ := json.Marshal(map[string]string{"MethodName": method, "UtcNow": now.UTC().Format(time.RFC3339Nano), "RandGuid": uuid.NewString()})
	return b
}

// EncodeServiceBus builds the invocation the host sends for a Service Bus trigger named
// trigger on function function: the body double-encoded, metadata strings quoted, numbers
// as strings, and (the host's ApplyBindingData quirk) every top-level property of a JSON
// body copied into Metadata.
func EncodeServiceBus(function, trigger string, m ServiceBusMessage, now time.Time) ([]byte, error) {
	md := map[string]json.RawMessage{
		"DeliveryCount":   hostNumber(int64(m.DeliveryCount)),
		"SequenceNumber":  hostNumber(m.SequenceNumber),
		"MessageId":       hostString(m.MessageID),
		"SessionId":       hostString(m.SessionID),
		"ContentType":     hostString(m.ContentType),
		"Subject":         hostString(m.Subject),
		"Label":           hostString(m.Subject),
		"LockToken":       hostString(m.LockToken),
		"EnqueuedTimeUtc": json.RawMessage(strconv.Quote(m.EnqueuedTime.UTC().Format("2006-01-02T15:04:05"))),
		"EnqueuedTime":    json.RawMessage(strconv.Quote(m.EnqueuedTime.UTC().Format("2006-01-02T15:04:05+00:00"))),
		"MessageActions":  json.RawMessage(`{}`),
		"SessionActions":  json.RawMessage(`{}`),
		"Client":          json.RawMessage(`{"FullyQualifiedNamespace":"local","Identifier":"local","TransportType":0,"IsClosed":false}`),
		"sys":             sys(function, now),
	}
	props := m.ApplicationProperties
	if props == nil {
		props = map[string]any{}
	}
	pb, err := json.Marshal(props)
	if err != nil {
		return nil, fmt.Errorf("funchost: application properties: %w", err)
	}
	md["ApplicationProperties"], md["UserProperties"] = pb, pb
	var top map[string]json.RawMessage
	if json.Unmarshal(m.Body, &top) == nil {
		// The host's binding data is case-insensitive: a body key replaces the binding
		// value of the same name in any case (a body "messageId" replaces MessageId).
		for k, v := range top {
			for name := range md {
				if strings.EqualFold(name, k) {
					delete(md, name)
				}
			}
			md[k] = v
		}
	}
	inv := map[string]any{
		"Data":     map[string]json.RawMessage{trigger: hostString(string(m.Body))},
		"Metadata": md,
	}
	return json.Marshal(inv)
}

// EncodeTimer builds the invocation the host sends for a timer trigger. A zero last
// time gives ScheduleStatus null, as on a first run.
func EncodeTimer(function, trigger string, last, next time.Time, pastDue bool, now time.Time) ([]byte, error) {
	var status any
	if !last.IsZero() {
		status = map[string]string{
			"Last":        last.UTC().Format("2006-01-02T15:04:05.0000000+00:00"),
			"Next":        next.UTC().Format("2006-01-02T15:04:05.0000000+00:00"),
			"LastUpdated": now.UTC().Format("2006-01-02T15:04:05.0000000+00:00"),
		}
	}
	inv := map[string]any{
		"Data": map[string]any{trigger: map[string]any{
			"Schedule":       map[string]bool{"AdjustForDST": true},
			"ScheduleStatus": status,
			"IsPastDue":      pastDue,
		}},
		"Metadata": map[string]json.RawMessage{"sys": sys(function, now)},
	}
	return json.Marshal(inv)
}

// EncodeHTTP builds the invocation the host sends for an HTTP trigger named trigger (no
// request forwarding), from the request as it reached the host. As the host does
// (Azure/azure-functions-host src/WebJobs.Script/Extensions/HttpRequestExtensions.cs):
// Body is included only when the request's ContentLength is above zero (a chunked
// request, ContentLength -1, arrives without one), and it is read as UTF-8 text: a
// byte-order mark is dropped and each invalid byte becomes U+FFFD. params are the route's
// values (e.g. {"entity": "customer"}); they go to Params and to Metadata.
func EncodeHTTP(function, trigger string, r *http.Request, params map[string]string, now time.Time) ([]byte, error) {
	headers := map[string][]string{}
	for k, v := range r.Header {
		headers[k] = v
	}
	if r.ContentLength > 0 {
		headers["Content-Length"] = []string{strconv.FormatInt(r.ContentLength, 10)}
	}
	if len(r.TransferEncoding) > 0 {
		headers["Transfer-Encoding"] = r.TransferEncoding
	}
	query := map[string]string{}
	for k, v := range r.URL.Query() {
		query[k] = strings.Join(v, ",")
	}
	if params == nil {
		params = map[string]string{}
	}
	u := *r.URL
	if u.Host == "" {
		u.Host = r.Host
	}
	if u.Scheme == "" {
		u.Scheme = "https"
	}
	req := map[string]any{
		"Url": u.String(), "Method": r.Method, "Query": query, "Headers": headers,
		"Params": params, "Identities": []any{},
	}
	if r.ContentLength > 0 && r.Body != nil {
		b, err := io.ReadAll(io.LimitReader(r.Body, r.ContentLength))
		if err != nil {
			return nil, fmt.Errorf("funchost: read request body: %w", err)
		}
		req["Body"] = hostText(b)
	}
	md := map[string]any{"Query": query, "Headers": firstValues(headers), "sys": sys(function, now)}
	for k, v := range params {
		md[k] = v
	}
	return json.Marshal(map[string]any{"Data": map[string]any{trigger: req}, "Metadata": md})
}

// hostText decodes b the way .NET's UTF-8 reader does: a leading byte-order mark is
// dropped and every byte that is not part of a valid sequence becomes U+FFFD.
func hostText(b []byte) string {
	b = bytes.TrimPrefix(b, []byte("\xef\xbb\xbf"))
	if utf8.Valid(b) {
		return string(b)
	}
	var sb strings.Builder
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		sb.WriteRune(r) // utf8.RuneError is U+FFFD
		b = b[n:]
	}
	return sb.String()
}

func firstValues(h map[string][]string) map[string]string {
	out := map[string]string{}
	for k, v := range h {
		if len(v) > 0 {
			out[k] = v[0]
		}
	}
	return out
}
