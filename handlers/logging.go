package main

import (
	"context"
	"io"
	"log/slog"
	"sync"
)

// newLogger writes one JSON line per record: Info and Debug to stdout, Warn and Error to
// stderr. The Functions host logs a custom handler's stdout at Information and each stderr
// line as Error, or as Warning when the line contains "warn" in any case
// (Azure/azure-functions-host src/WebJobs.Script/Workers/ProcessManagement/WorkerProcess.cs,
// ParseErrorMessageAndLog). A warning line always says "WARN" (its level); an error line
// never contains "warn": where its text does, the "a" is written as the JSON escape \u0061,
// which any JSON reader turns back into the same text.
func newLogger(stdout, stderr io.Writer, level slog.Leveler) *slog.Logger {
	o := &slog.HandlerOptions{Level: level}
	errw := &noWarnWriter{w: stderr}
	return slog.New(&splitHandler{
		info: slog.NewJSONHandler(stdout, o),
		warn: slog.NewJSONHandler(stderr, o),
		err:  slog.NewJSONHandler(errw, o),
	})
}

// splitHandler sends a record to the handler of its level. Each JSON handler writes a
// record in one Write call, with newlines inside values escaped: one line per record.
type splitHandler struct {
	info, warn, err slog.Handler
}

func (h *splitHandler) pick(l slog.Level) slog.Handler {
	switch {
	case l >= slog.LevelError:
		return h.err
	case l >= slog.LevelWarn:
		return h.warn
	default:
		return h.info
	}
}

func (h *splitHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.pick(l).Enabled(ctx, l)
}

func (h *splitHandler) Handle(ctx context.Context, r slog.Record) error {
	return h.pick(r.Level).Handle(ctx, r)
}

func (h *splitHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &splitHandler{info: h.info.WithAttrs(as), warn: h.warn.WithAttrs(as), err: h.err.WithAttrs(as)}
}

func (h *splitHandler) WithGroup(name string) slog.Handler {
	return &splitHandler{info: h.info.WithGroup(name), warn: h.warn.WithGroup(name), err: h.err.WithGroup(name)}
}

// noWarnWriter rewrites every "warn" (any case) in a JSON line as w\u0061rn, so the host
// keeps the line at Error level. "warn" can only occur inside JSON strings, where the
// escape means the same letter.
type noWarnWriter struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
}

func (n *noWarnWriter) Write(p []byte) (int, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.buf = n.buf[:0]
	for i := 0; i < len(p); i++ {
		if i+4 <= len(p) && lower(p[i]) == 'w' && lower(p[i+1]) == 'a' && lower(p[i+2]) == 'r' && lower(p[i+3]) == 'n' {
			a := "\\u0061"
			if p[i+1] == 'A' {
				a = "\\u0041"
			}
			n.buf = append(n.buf, p[i])
			n.buf = append(n.buf, a...)
			i++ // past the "a"; "rn" follows as is
			continue
		}
		n.buf = append(n.buf, p[i])
	}
	if _, err := n.w.Write(n.buf); err != nil {
		return 0, err
	}
	return len(p), nil
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}
