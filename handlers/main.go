// Command handlers is the app's one executable. Started by the Azure Functions host (which
// sets FUNCTIONS_CUSTOMHANDLER_PORT) it serves the custom-handler protocol; started on its
// own it runs the whole app locally: public routes on LISTEN_ADDR, an embedded queue, an
// in-process timer and, without DATAVERSE_URL, a built-in Dataverse sandbox. Started as
// `handlers agent` next to a store, it is the push agent (storesync.Agent).
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
)

func main() {
	log := newLogger(os.Stdout, os.Stderr, slog.LevelInfo)
	slog.SetDefault(log) // the standard log package and slog.Default write through it too
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.LookupEnv, os.Args[1:], log); err != nil {
		log.Error("nopsync stopped", "error", err.Error()) // one stderr line, however long the error
		os.Exit(1)
	}
}

// cpuProfile writes a CPU profile of the whole run to file (for benchmarks: see
// scripts/bench); "" does nothing.
func cpuProfile(file string, log *slog.Logger) func() {
	if file == "" {
		return func() {}
	}
	f, err := os.Create(file)
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		log.Warn("no CPU profile", "file", file, "error", err)
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
	}
}

// run loads the settings and serves until ctx ends; `handlers agent` runs push mode.
func run(ctx context.Context, env func(string) (string, bool), args []string, log *slog.Logger) error {
	cfg, err := loadConfig(env)
	if err != nil {
		return err
	}
	defer cpuProfile(cfg.CPUProfile, log)()
	if len(args) > 0 && args[0] == "agent" {
		return runAgent(ctx, cfg, args[1:], log, nil)
	}
	if len(args) > 0 {
		return fmt.Errorf("unknown command %q (none: the app; agent: push mode)", args[0])
	}
	if cfg.Local {
		return runLocal(ctx, cfg, log, nil)
	}
	return runHost(ctx, cfg, log)
}

var errConfig = errors.New("settings")
