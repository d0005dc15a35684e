package httpapi

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// floodStatuses are the answers a flood produces: clients without a good
// key, a key over its scope or rate, an overloaded Polyv. Their log lines
// are bounded, so that a flood cannot drown the log.
var floodStatuses = map[int]bool{401: true, 403: true, 429: true, 503: true}

// Each kind of line of each flood status gets floodLinesPerSecond, with a
// burst of as many.
const floodLinesPerSecond = 10

// quietLog bounds the log lines of floodStatuses. A line let through after
// some were held back is preceded, at most once a second, by one saying how
// many.
type quietLog struct {
	log *slog.Logger

	mu    sync.Mutex
	kinds map[lineKind]*heldLines
}

type lineKind struct {
	msg    string
	status int
}

type heldLines struct {
	limit    *rate.Limiter
	held     int
	since    time.Time // of the first line held back
	reported time.Time // the last "suppressed" line
}

func newQuietLog(log *slog.Logger) *quietLog {
	return &quietLog{log: log, kinds: map[lineKind]*heldLines{}}
}

// allow reports whether a line msg about a status answer may be written now.
func (q *quietLog) allow(ctx context.Context, msg string, status int) bool {
	if !floodStatuses[status] {
		return true
	}
	k := lineKind{msg, status}
	q.mu.Lock()
	h := q.kinds[k]
	if h == nil {
		h = &heldLines{limit: rate.NewLimiter(floodLinesPerSecond, floodLinesPerSecond)}
		q.kinds[k] = h
	}
	if !h.limit.Allow() {
		if h.held == 0 {
			h.since = time.Now()
		}
		h.held++
		q.mu.Unlock()
		return false
	}
	held, since := h.held, h.since
	if held > 0 && time.Since(h.reported) < time.Second {
		held = 0 // at most one "suppressed" line a second: the count goes on
	} else if held > 0 {
		h.held, h.reported = 0, time.Now()
	}
	q.mu.Unlock()
	if held > 0 {
		q.log.LogAttrs(ctx, slog.LevelWarn, "similar lines suppressed", slog.String("line", msg),
			slog.Int("status", status), slog.Int("suppressed", held), slog.Time("since", since))
	}
	return true
}
