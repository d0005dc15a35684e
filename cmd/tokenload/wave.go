package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/tokencache/tokencache/internal/cli"
)

// waveGroup is one population of a join wave: callers of one API key and
// role, arriving evenly over the wave.
type waveGroup struct {
	name, key, role string
	n               int
}

// joiner is what happened to one caller of the wave.
type joiner struct {
	group      string
	simKey     string // the simulator's name of its identity
	ok         bool
	left       bool          // gave up: its next retry would have come past -give-up
	wait       time.Duration // from its first ask to its token
	fetched    bool          // its token was fetched for it (Cache-Status fwd=miss)
	retried    int           // 503s it retried after Retry-After
	retriedOK  int           // of those, retries that got the token
	statuses   []int
	errorCodes []string
}

// waveReport is what `tokenload wave` measures.
type waveReport struct {
	Joiners             map[string]int    `json:"joiners"`
	Served              map[string]int    `json:"served"`
	Left                map[string]int    `json:"left"`
	WaitP50             map[string]string `json:"waitP50"`
	WaitP99             map[string]string `json:"waitP99"`
	StatusCodes         map[string]int    `json:"statusCodes"`
	ErrorCodes          map[string]int    `json:"errorCodes"`
	PolyvCalls          int64             `json:"polyvCalls"`
	PolyvCallsMaxPerSec int64             `json:"polyvCallsMaxPerSecond"`
	PolyvBans           int64             `json:"polyvBans"`
	BudgetUsedWaiting   float64           `json:"budgetUsedWhileWaiting"`
	CallsReachingCaller float64           `json:"callsReachingAWaitingCaller"`
	CallsForLeavers     int64             `json:"callsForCallersWhoLeft"`
	Retried503          int               `json:"retried503"`
	Retried503OK        float64           `json:"retried503Succeeded"`
	HitsP99Idle         string            `json:"hitsP99Idle"`
	HitsP99Wave         string            `json:"hitsP99DuringWave"`
	HitsRatio           float64           `json:"hitsP99Ratio"`
	MaxQueued           float64           `json:"maxQueued"`
	BytesPerWaiter      *float64          `json:"heapBytesPerQueuedFetch,omitempty"`
}

func waveCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tokenload wave", flag.ContinueOnError)
	var targets targetList
	fs.Var(&targets, "target", "tokencache base URL, used round-robin; repeat it or separate with commas (default http://127.0.0.1:8080)")
	keyA := fs.String("key-a", os.Getenv("TOKENLOAD_API_KEY"), "API key of the big viewer population (env TOKENLOAD_API_KEY); it also sends the hits")
	viewersA := fs.Int("viewers-a", 3000, "distinct viewers of key A")
	keyB := fs.String("key-b", "", "API key of the second viewer population (default: key A)")
	viewersB := fs.Int("viewers-b", 300, "distinct viewers of key B")
	keyC := fs.String("key-c", "", "API key of the hosts (default: key A)")
	teachers := fs.Int("teachers", 10, "distinct teachers of key C")
	over := fs.Duration("over", 10*time.Second, "how long the wave takes to arrive, every population spread evenly over it")
	channel := fs.String("channel", "wave", "the event's channel")
	timeout := fs.Duration("timeout", 10*time.Second, "each attempt's Request-Timeout")
	giveUp := fs.Duration("give-up", 60*time.Second, "a caller leaves when its next retry would come later than this after its first ask")
	stats := fs.String("stats", "", "Polyv simulator base URL, for its calls, bans and issued tokens (required)")
	limit := fs.Int("rate-limit", 50, "the fleet's POLYV_RATE_LIMIT, to measure the budget used against")
	hitsRate := fs.Int("hits-rate", 100, "hits per second on warm tokens, alone before the wave and beside it; 0: none")
	metricsURLs := fs.String("metrics", "", "comma-separated /metrics URLs of the instances (default: each target's /metrics)")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if err := cli.Parse(fs, args, stdout, "Rehearses a join wave: distinct viewers of two keys and a few teachers of a third join over -over, each retrying after Retry-After; reports how the Polyv budget was spent."); err != nil {
		return err
	}
	if *stats == "" {
		return &cli.UsageError{Msg: "-stats is required: the wave is measured at the simulator"}
	}
	if *keyB == "" {
		*keyB = *keyA
	}
	if *keyC == "" {
		*keyC = *keyA
	}
	bases := targets.orDefault()
	scrape := splitTargets(*metricsURLs)
	if len(scrape) == 0 {
		for _, b := range bases {
			scrape = append(scrape, b+"/metrics")
		}
	}
	*stats = strings.TrimSuffix(strings.TrimRight(*stats, "/"), "/stats")
	run := randomRun()
	client := &http.Client{Timeout: *timeout + 5*time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1024, MaxConnsPerHost: 0}}

	var rep waveReport
	var hitsIdle, hitsWave vegeta.Metrics
	warm, err := warmHits(ctx, client, bases, *keyA, *channel+"-warm", run)
	if err != nil {
		return err
	}
	if *hitsRate > 0 {
		hitsIdle = attackHits(ctx, bases, *keyA, warm, *hitsRate, 3*time.Second)
	}
	heapBefore := scrapeSum(ctx, scrape, "go_memstats_heap_inuse_bytes")
	before, err := readSimStats(ctx, *stats)
	if err != nil {
		return fmt.Errorf("-stats %s: %w", *stats, err)
	}

	sampler := startSampler(ctx, *stats, scrape)
	groups := []waveGroup{{"a", *keyA, "viewer", *viewersA}, {"b", *keyB, "viewer", *viewersB}, {"teachers", *keyC, "teacher", *teachers}}
	var mu sync.Mutex
	var joiners []joiner
	var wg sync.WaitGroup
	start := time.Now()
	for _, g := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pacer := vegeta.ConstantPacer{Freq: max(g.n, 1), Per: *over}
			var inner sync.WaitGroup
			for i := range g.n {
				wait, _ := pacer.Pace(time.Since(start), uint64(i))
				select {
				case <-time.After(wait):
				case <-ctx.Done():
				}
				inner.Add(1)
				go func() {
					defer inner.Done()
					j := join(ctx, client, bases[i%len(bases)], g, *channel, fmt.Sprintf("%s-%s-%d", run, g.name, i), *timeout, *giveUp)
					mu.Lock()
					joiners = append(joiners, j)
					mu.Unlock()
				}()
			}
			inner.Wait()
		}()
	}
	if *hitsRate > 0 {
		hitsWave = attackHits(ctx, bases, *keyA, warm, *hitsRate, *over)
	}
	wg.Wait()
	samples := sampler()
	after, err := readSimStats(ctx, *stats)
	if err != nil {
		return fmt.Errorf("-stats %s after the wave: %w", *stats, err)
	}
	issued, err := simIssued(ctx, *stats)
	if err != nil {
		return fmt.Errorf("-stats %s after the wave: %w", *stats, err)
	}

	summarize(&rep, joiners)
	rep.PolyvCalls = after.calls - before.calls
	rep.PolyvBans = after.bans - before.bans
	rep.PolyvCallsMaxPerSec, rep.BudgetUsedWaiting, rep.MaxQueued = budgetFigures(samples, *limit)
	rep.CallsForLeavers = callsForLeavers(issued, joiners)
	fetched := 0
	for _, j := range joiners {
		if j.fetched {
			fetched++
		}
	}
	if rep.PolyvCalls > 0 {
		rep.CallsReachingCaller = float64(fetched) / float64(rep.PolyvCalls)
	}
	if *hitsRate > 0 {
		rep.HitsP99Idle, rep.HitsP99Wave = hitsIdle.Latencies.P99.String(), hitsWave.Latencies.P99.String()
		if hitsIdle.Latencies.P99 > 0 {
			rep.HitsRatio = float64(hitsWave.Latencies.P99) / float64(hitsIdle.Latencies.P99)
		}
	}
	if heapBefore != nil && rep.MaxQueued > 0 {
		for _, s := range samples {
			if s.queued == rep.MaxQueued && s.heap != nil {
				per := (*s.heap - *heapBefore) / s.queued
				rep.BytesPerWaiter = &per
				break
			}
		}
	}
	if *asJSON {
		e := json.NewEncoder(stdout)
		e.SetIndent("", "  ")
		return e.Encode(rep)
	}
	printWave(stdout, rep)
	return nil
}

// join is one caller: it asks, retries after each 503's Retry-After while
// -give-up allows, and reports what happened.
func join(ctx context.Context, client *http.Client, base string, g waveGroup, channel, userID string, timeout, giveUp time.Duration) joiner {
	j := joiner{group: g.name, simKey: channel + "/" + userID + "/" + g.role + "/"}
	first := time.Now()
	u := base + "/v1/channels/" + url.PathEscape(channel) + "/chat-token?" + url.Values{"userId": {userID}, "role": {g.role}}.Encode()
	retrying := false
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			j.errorCodes = append(j.errorCodes, "request: "+err.Error())
			return j
		}
		req.Header.Set("Authorization", "Bearer "+g.key)
		req.Header.Set("Request-Timeout", strconv.FormatFloat(timeout.Seconds(), 'f', -1, 64))
		resp, err := client.Do(req)
		if err != nil {
			j.errorCodes = append(j.errorCodes, "transport")
			return j
		}
		var body struct {
			Token string `json:"token"`
			Error struct {
				Code string `json:"code"`
			} `json:"error"`
		}
		_ = json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&body)
		resp.Body.Close()
		j.statuses = append(j.statuses, resp.StatusCode)
		if retrying && resp.StatusCode == http.StatusOK {
			j.retriedOK++
		}
		if resp.StatusCode == http.StatusOK && body.Token != "" {
			j.ok, j.wait = true, time.Since(first)
			j.fetched = strings.Contains(resp.Header.Get("Cache-Status"), "fwd=miss")
			return j
		}
		j.errorCodes = append(j.errorCodes, fmt.Sprintf("%d %s", resp.StatusCode, body.Error.Code))
		secs, err := strconv.Atoi(resp.Header.Get("Retry-After"))
		if resp.StatusCode != http.StatusServiceUnavailable || err != nil {
			return j
		}
		retryAt := time.Duration(secs) * time.Second
		if time.Since(first)+retryAt > giveUp {
			j.left = true
			return j
		}
		select {
		case <-time.After(retryAt):
		case <-ctx.Done():
			return j
		}
		j.retried++
		retrying = true
	}
}

// warmHits fetches a few tokens, to ask for again as hits.
func warmHits(ctx context.Context, client *http.Client, bases []string, key, channel, run string) ([]string, error) {
	var urls []string
	for i := range 50 {
		base := bases[i%len(bases)]
		u := base + "/v1/channels/" + url.PathEscape(channel) + "/chat-token?" + url.Values{"userId": {fmt.Sprintf("%s-warm-%d", run, i)}, "role": {"viewer"}}.Encode()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := client.Do(req)
		if err != nil {
			return nil, fmt.Errorf("warming the hits: %w", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("warming the hits: %s from %s; check -key-a", resp.Status, base)
		}
		urls = append(urls, u)
	}
	return urls, nil
}

// attackHits asks for the warm tokens at rate for d, with vegeta.
func attackHits(ctx context.Context, bases []string, key string, urls []string, rate int, d time.Duration) vegeta.Metrics {
	var n atomic.Uint64
	targeter := func(t *vegeta.Target) error {
		t.Method = http.MethodGet
		t.URL = urls[n.Add(1)%uint64(len(urls))]
		t.Header = http.Header{"Authorization": {"Bearer " + key}}
		return nil
	}
	attacker := vegeta.NewAttacker(vegeta.KeepAlive(true), vegeta.Timeout(10*time.Second))
	go func() { <-ctx.Done(); attacker.Stop() }()
	var m vegeta.Metrics
	for res := range attacker.Attack(targeter, vegeta.Rate{Freq: rate, Per: time.Second}, d, "hits") {
		m.Add(res)
	}
	m.Close()
	return m
}

func randomRun() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// summarize counts the joiners by group and outcome.
func summarize(rep *waveReport, joiners []joiner) {
	rep.Joiners, rep.Served, rep.Left = map[string]int{}, map[string]int{}, map[string]int{}
	rep.WaitP50, rep.WaitP99 = map[string]string{}, map[string]string{}
	rep.StatusCodes, rep.ErrorCodes = map[string]int{}, map[string]int{}
	waits := map[string][]time.Duration{}
	retriedOK := 0
	for _, j := range joiners {
		rep.Joiners[j.group]++
		if j.ok {
			rep.Served[j.group]++
			waits[j.group] = append(waits[j.group], j.wait)
		}
		if j.left {
			rep.Left[j.group]++
		}
		for _, s := range j.statuses {
			rep.StatusCodes[strconv.Itoa(s)]++
		}
		for _, c := range j.errorCodes {
			rep.ErrorCodes[c]++
		}
		rep.Retried503 += j.retried
		retriedOK += j.retriedOK
	}
	if rep.Retried503 > 0 {
		rep.Retried503OK = float64(retriedOK) / float64(rep.Retried503)
	}
	for g, w := range waits {
		slices.Sort(w)
		rep.WaitP50[g] = w[len(w)/2].Round(time.Millisecond).String()
		rep.WaitP99[g] = w[min(len(w)-1, len(w)*99/100)].Round(time.Millisecond).String()
	}
}

// callsForLeavers counts the tokens Polyv issued for the wave's callers that
// no caller received: calls made for callers who had left.
func callsForLeavers(issued map[string][]string, joiners []joiner) int64 {
	delivered := map[string]bool{}
	for _, j := range joiners {
		if j.ok {
			delivered[j.simKey] = true
		}
	}
	var wasted int64
	for _, j := range joiners {
		n := int64(len(issued[j.simKey]))
		if delivered[j.simKey] {
			n-- // the one its caller got
		}
		wasted += max(n, 0)
	}
	return wasted
}

type simCounts struct{ calls, bans int64 }

func readSimStats(ctx context.Context, base string) (simCounts, error) {
	var st struct {
		Calls map[string]int64 `json:"calls"`
		Bans  int64            `json:"bans"`
	}
	err := getJSON(ctx, base+"/stats", &st)
	return simCounts{calls: st.Calls["get-chat-token"], bans: st.Bans}, err
}

// sample is one look at the simulator and the instances during the wave.
type sample struct {
	at     time.Time
	calls  int64
	queued float64
	heap   *float64
}

// startSampler looks every 200 ms until stopped, and returns the looks.
func startSampler(ctx context.Context, stats string, scrape []string) (stop func() []sample) {
	done := make(chan struct{})
	var samples []sample
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			s := sample{at: time.Now()}
			if c, err := readSimStats(ctx, stats); err == nil {
				s.calls = c.calls
			}
			if q := scrapeSum(ctx, scrape, "tokencache_polyv_queue_depth"); q != nil {
				s.queued = *q
			}
			s.heap = scrapeSum(ctx, scrape, "go_memstats_heap_inuse_bytes")
			samples = append(samples, s)
			select {
			case <-tick.C:
			case <-done:
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return func() []sample { close(done); <-finished; return samples }
}

// budgetFigures are the most Polyv calls in any second, the share of the
// budget used while fetches queued, and the most fetches queued at once.
func budgetFigures(samples []sample, limit int) (maxPerSecond int64, used, maxQueued float64) {
	var busyCalls int64
	var busy time.Duration
	for i, s := range samples {
		maxQueued = max(maxQueued, s.queued)
		for j := i + 1; j < len(samples) && samples[j].at.Sub(s.at) <= time.Second; j++ {
			maxPerSecond = max(maxPerSecond, samples[j].calls-s.calls)
		}
		if i+1 < len(samples) && s.queued > 0 && samples[i+1].queued > 0 {
			busyCalls += samples[i+1].calls - s.calls
			busy += samples[i+1].at.Sub(s.at)
		}
	}
	if busy > 0 {
		used = float64(busyCalls) / (float64(limit) * busy.Seconds())
	}
	return maxPerSecond, used, maxQueued
}

// scrapeSum sums one metric over the instances; nil if any cannot be read.
func scrapeSum(ctx context.Context, urls []string, name string) *float64 {
	var sum float64
	for _, u := range urls {
		v, err := scrapeMetric(ctx, u, name)
		if err != nil {
			return nil
		}
		sum += v
	}
	return &sum
}

func printWave(w io.Writer, r waveReport) {
	groups := []string{"a", "b", "teachers"}
	fmt.Fprintf(w, "%-10s %8s %8s %6s %10s %10s\n", "group", "joiners", "served", "left", "wait p50", "wait p99")
	for _, g := range groups {
		fmt.Fprintf(w, "%-10s %8d %8d %6d %10s %10s\n", g, r.Joiners[g], r.Served[g], r.Left[g], r.WaitP50[g], r.WaitP99[g])
	}
	fmt.Fprintf(w, "statuses: %s\nerrors: %s\n", formatCounts(r.StatusCodes), formatCounts(r.ErrorCodes))
	fmt.Fprintf(w, "Polyv calls: %d (most in a second: %d), bans: %d\n", r.PolyvCalls, r.PolyvCallsMaxPerSec, r.PolyvBans)
	fmt.Fprintf(w, "budget used while fetches queued: %.0f%%; calls whose token reached a waiting caller: %.0f%%; calls for callers who had left: %d\n",
		100*r.BudgetUsedWaiting, 100*r.CallsReachingCaller, r.CallsForLeavers)
	fmt.Fprintf(w, "503s retried after Retry-After: %d, of which succeeded: %.0f%%\n", r.Retried503, 100*r.Retried503OK)
	if r.HitsP99Idle != "" {
		fmt.Fprintf(w, "hits p99: idle %s, during the wave %s (%.2fx)\n", r.HitsP99Idle, r.HitsP99Wave, r.HitsRatio)
	}
	if r.BytesPerWaiter != nil {
		fmt.Fprintf(w, "heap per queued fetch: %.0f bytes (at %.0f queued)\n", *r.BytesPerWaiter, r.MaxQueued)
	}
}

// scrapeMetric sums the samples of one metric at a /metrics URL.
func scrapeMetric(ctx context.Context, u, name string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return 0, err
	}
	f := families[name]
	if f == nil {
		return 0, fmt.Errorf("%s: no %s", u, name)
	}
	var sum float64
	for _, m := range f.GetMetric() {
		sum += m.GetGauge().GetValue() + m.GetCounter().GetValue()
	}
	return sum, nil
}
