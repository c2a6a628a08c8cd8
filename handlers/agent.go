package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/nopsync/nopsync/shared/config"
	"github.com/nopsync/nopsync/shared/storesync"
)

// agentUsage explains `handlers agent`.
const agentUsage = `usage: handlers agent [-once] [-resend]

Push mode: reads the store's database (NOP_DB_PROVIDER, NOP_DB_CONNECTION, STORE_ID,
STORE_URL) and POSTs what changed to AGENT_EVENTS_URL with AGENT_FUNCTION_KEY and a
signature made with WEBHOOK_SECRET, every AUTO_SYNC_PERIOD_MINUTES; AGENT_STATE_FILE keeps
its checkpoint and what it sent. -once: one pass, then exit. -resend: forget what earlier
passes sent and send every row again (after the app's state table was wiped; a new
AGENT_EVENTS_URL does the same by itself).`

// agentOptions lets tests shorten the agent's clocks.
type agentOptions struct {
	period     time.Duration
	minBackoff time.Duration
	maxBackoff time.Duration
	pageSize   int
	client     *http.Client
}

// runAgent runs push mode until ctx ends (or one pass with -once).
func runAgent(ctx context.Context, cfg *config.Config, args []string, log *slog.Logger, ao *agentOptions) error {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	once := fs.Bool("once", false, "one pass, then exit")
	resend := fs.Bool("resend", false, "forget what earlier passes sent and send every row again (after the app's state was wiped)")
	fs.Usage = func() { fmt.Fprintln(fs.Output(), agentUsage) }
	if err := fs.Parse(args); err != nil {
		return err
	}
	if ao == nil {
		ao = &agentOptions{}
	}
	var problems []string
	if !cfg.StoreReader() {
		problems = append(problems, "NOP_DB_PROVIDER is required in push mode (sqlserver, mysql or postgresql)")
	}
	if cfg.AgentEventsURL == "" {
		problems = append(problems, "AGENT_EVENTS_URL is required in push mode (the app's events URL, the deployment's EVENTS_URL output)")
	} else if u, err := url.Parse(cfg.AgentEventsURL); err == nil {
		// An app elsewhere refuses what is unsigned or without a key: say so at start
		// rather than retry refused requests for ever. Only an app in local mode on this
		// machine may run without a secret (it then accepts unsigned events).
		host := u.Hostname()
		ip := net.ParseIP(host)
		loopback := strings.EqualFold(host, "localhost") || (ip != nil && ip.IsLoopback())
		if len(cfg.WebhookSecrets) == 0 && !loopback {
			problems = append(problems, "WEBHOOK_SECRET is required when AGENT_EVENTS_URL is not on this machine: the app refuses unsigned events")
		}
		if cfg.AgentFunctionKey == "" && strings.HasSuffix(strings.ToLower(host), ".azurewebsites.net") {
			problems = append(problems, "AGENT_FUNCTION_KEY is required for an app in Azure: its events function needs the function key")
		}
		if cfg.AgentFunctionKey != "" && u.Scheme != "https" && !loopback {
			problems = append(problems, "AGENT_EVENTS_URL must be https:// when AGENT_FUNCTION_KEY is set and the app is not on this machine: the key would travel in clear")
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %v", errConfig, &config.Error{Problems: problems})
	}
	src, err := newStoreSource(cfg, nil)
	if err != nil {
		return err
	}
	defer src.Close()
	secret := ""
	if len(cfg.WebhookSecrets) > 0 {
		secret = cfg.WebhookSecrets[0]
	} else {
		log.Warn("agent: no WEBHOOK_SECRET: requests are not signed (only an app in local mode without a secret accepts them)")
	}
	period := cfg.AutoSyncPeriod
	if ao.period > 0 {
		period = ao.period
	}
	agent, err := storesync.NewAgent(storesync.AgentOptions{
		Source: src, EventsURL: cfg.AgentEventsURL, FunctionKey: cfg.AgentFunctionKey, Secret: secret,
		StateFile: cfg.AgentStateFile, Period: period, PageSize: ao.pageSize, HTTP: ao.client,
		MinBackoff: ao.minBackoff, MaxBackoff: ao.maxBackoff, Log: log, Resend: *resend,
	})
	if err != nil {
		return err
	}
	log.Info("agent started", "events", cfg.AgentEventsURL, "provider", cfg.NopDBProvider, "state", cfg.AgentStateFile, "periodMinutes", int(period/time.Minute), "once", *once)
	if *once {
		return oncePass(ctx, agent)
	}
	return agent.Run(ctx)
}

// oncePass runs `agent -once`: nil only when the pass finished and every row it read was
// delivered or unchanged, so a scheduler running it (cron, Task Scheduler) sees a pass cut
// short or rows left behind in its exit status, not only in the log.
func oncePass(ctx context.Context, agent *storesync.Agent) error {
	progress, err := agent.Pass(ctx)
	if ctx.Err() != nil {
		return fmt.Errorf("agent: pass interrupted (%v); the next run resumes from its checkpoint", context.Cause(ctx))
	}
	if err != nil {
		return err
	}
	var failed []string
	for _, ent := range slices.Sorted(maps.Keys(progress)) {
		if n := progress[ent].Failed; n > 0 {
			failed = append(failed, fmt.Sprintf("%d %ss", n, ent))
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("agent: pass finished with rows not delivered (%s): each is logged with its reason as \"not sent\" and tried again next pass", strings.Join(failed, ", "))
	}
	return nil
}
