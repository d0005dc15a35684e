// Package polyvsim simulates Polyv's two chat-token endpoints with Polyv's
// rules: appId, timestamp window, signature, params and role are checked in
// Polyv's order, so a client that is wrong fails here as it would at Polyv.
// Latency, errors, illegal channels and a rate limit can be injected.
package polyvsim

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/tokencache/tokencache/polyv"
)

// Paths of the simulated endpoints.
const (
	ChatTokenPath    = "/live/v3/channel/common/get-chat-token"
	ChannelTokenPath = "/live/v3/channel/common/get-token"
)

// TimestampWindow is how far a request's timestamp may be from the clock.
const TimestampWindow = 3 * time.Minute

// Options configures a Server. Zero fields take the defaults noted.
type Options struct {
	AppID     string // defaults to "sim-app"
	AppSecret string // defaults to "sim-secret"
	// Latency delays every reply.
	Latency time.Duration
	// ErrorRate is the fraction of valid calls answered with Polyv's 500 "fail".
	ErrorRate float64
	// IllegalChannels are answered with 403 "illegal channel id".
	IllegalChannels []string
	// RateLimit is the calls per second allowed before Polyv's qps error;
	// 0 means no limit.
	RateLimit int
	// Ban, if set, refuses every call for this long once RateLimit is
	// exceeded, and a call during the ban starts it again: the strict
	// reading of Polyv's 5-minute block.
	Ban time.Duration
	// Now is the server's clock; it defaults to time.Now.
	Now func() time.Time
}

// Server is the simulator as an http.Handler. Its knobs may be changed while
// it serves.
type Server struct {
	appID, secret string
	now           func() time.Time
	mux           *http.ServeMux

	mu        sync.Mutex
	latency   time.Duration
	errorRate float64
	illegal   map[string]bool
	limiter   *rate.Limiter
	ban       time.Duration
	banUntil  time.Time
	stats     Stats
	issued    map[string][]string // tokens issued per key, for checking clients
}

// Stats counts the calls the simulator has answered.
type Stats struct {
	// Calls counts every call per endpoint ("get-chat-token", "get-token").
	Calls map[string]int64 `json:"calls"`
	// Outcomes counts the replies by outcome ("ok", "invalid_signature", ...).
	Outcomes map[string]int64 `json:"outcomes"`
	// Keys counts successful token issues per key, "channel/user/role/origin"
	// for chat tokens and "channel" for channel tokens.
	Keys map[string]int64 `json:"keys"`
	// Issued is the number of tokens issued.
	Issued int64 `json:"issued"`
	// Bans counts the bans begun by exceeding the rate limit (see
	// Options.Ban), not counting calls that restarted one.
	Bans int64 `json:"bans"`
}

// New returns a simulator.
func New(opts Options) *Server {
	s := &Server{
		appID:  opts.AppID,
		secret: opts.AppSecret,
		now:    opts.Now,
		mux:    http.NewServeMux(),
	}
	if s.appID == "" {
		s.appID = "sim-app"
	}
	if s.secret == "" {
		s.secret = "sim-secret"
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.SetLatency(opts.Latency)
	s.SetErrorRate(opts.ErrorRate)
	s.SetIllegalChannels(opts.IllegalChannels)
	s.SetRateLimit(opts.RateLimit)
	s.SetBan(opts.Ban)
	s.ResetStats()

	s.mux.HandleFunc("POST "+ChatTokenPath, s.handle(polyv.EndpointChatToken))
	s.mux.HandleFunc("POST "+ChannelTokenPath, s.handle(polyv.EndpointChannelToken))
	s.mux.HandleFunc("GET /stats", s.serveStats)
	s.mux.HandleFunc("DELETE /stats", func(w http.ResponseWriter, _ *http.Request) { s.ResetStats(); w.WriteHeader(http.StatusNoContent) })
	s.mux.HandleFunc("POST /control", s.serveControl)
	s.mux.HandleFunc("GET /issued", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, http.StatusOK, s.Issued()) })
	return s
}

// AppID returns the appId the simulator accepts.
func (s *Server) AppID() string { return s.appID }

// ServeHTTP serves the endpoints, GET /stats, DELETE /stats and POST /control.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// SetLatency changes the delay of every reply.
func (s *Server) SetLatency(d time.Duration) { s.mu.Lock(); s.latency = d; s.mu.Unlock() }

// SetErrorRate changes the fraction of calls answered with 500 "fail".
func (s *Server) SetErrorRate(f float64) { s.mu.Lock(); s.errorRate = f; s.mu.Unlock() }

// SetIllegalChannels replaces the channels answered with "illegal channel id".
func (s *Server) SetIllegalChannels(ids []string) {
	m := make(map[string]bool, len(ids))
	for _, id := range ids {
		m[id] = true
	}
	s.mu.Lock()
	s.illegal = m
	s.mu.Unlock()
}

// SetRateLimit changes the calls per second allowed; 0 means no limit.
func (s *Server) SetRateLimit(perSecond int) {
	var l *rate.Limiter
	if perSecond > 0 {
		l = rate.NewLimiter(rate.Limit(perSecond), perSecond)
	}
	s.mu.Lock()
	s.limiter = l
	s.mu.Unlock()
}

// SetBan changes how long exceeding the rate limit bans every call; 0: no
// ban. It lifts a ban under way.
func (s *Server) SetBan(d time.Duration) {
	s.mu.Lock()
	s.ban, s.banUntil = d, time.Time{}
	s.mu.Unlock()
}

// refused reports whether a call now is refused for rate: during a ban
// (which the call starts again), or over the limit (which starts one).
func (s *Server) refused(limiter *rate.Limiter) (outcome string, refused bool) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ban > 0 && now.Before(s.banUntil) {
		s.banUntil = now.Add(s.ban)
		return "banned", true
	}
	if limiter == nil || limiter.AllowN(now, 1) {
		return "", false
	}
	if s.ban > 0 {
		s.banUntil = now.Add(s.ban)
		s.stats.Bans++
	}
	return "rate_limited", true
}

// Stats returns a copy of the counts so far.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{
		Calls:    maps.Clone(s.stats.Calls),
		Outcomes: maps.Clone(s.stats.Outcomes),
		Keys:     maps.Clone(s.stats.Keys),
		Issued:   s.stats.Issued,
		Bans:     s.stats.Bans,
	}
}

// ResetStats sets every count to zero and forgets the issued tokens.
func (s *Server) ResetStats() {
	s.mu.Lock()
	s.stats = Stats{Calls: map[string]int64{}, Outcomes: map[string]int64{}, Keys: map[string]int64{}}
	s.issued = map[string][]string{}
	s.mu.Unlock()
}

// Issued returns the tokens issued per key (as in Stats.Keys), so that a
// client can check that every token it was given is one Polyv issued for
// that key. GET /issued serves it.
func (s *Server) Issued() map[string][]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string][]string, len(s.issued))
	for k, v := range s.issued {
		out[k] = slices.Clone(v)
	}
	return out
}

// reply is Polyv's JSON envelope.
type reply struct {
	Code    int    `json:"code"`
	Status  string `json:"status"`
	Message string `json:"message"`
	Data    any    `json:"data"`
}

func (s *Server) handle(endpoint string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.stats.Calls[endpoint]++
		latency, errorRate, limiter := s.latency, s.errorRate, s.limiter
		s.mu.Unlock()

		if outcome, refused := s.refused(limiter); refused {
			s.fail(w, outcome, 400, "qps exceeds number of calls")
			return
		}
		// The form first: until the body is read, the server cannot see
		// the caller leave during the latency.
		formErr := r.ParseForm()
		if latency > 0 {
			select {
			case <-time.After(latency):
			case <-r.Context().Done():
				s.count("client_gone", "")
				return
			}
		}
		if formErr != nil {
			s.fail(w, "param_error", 400, "param validate error")
			return
		}
		params := make(map[string]string, len(r.Form))
		for k, v := range r.Form {
			params[k] = v[0]
		}
		if outcome, code, msg := s.check(endpoint, params); outcome != "" {
			s.fail(w, outcome, code, msg)
			return
		}
		if errorRate > 0 && mrand.Float64() < errorRate {
			s.fail(w, "server_error", 500, "fail")
			return
		}

		token := randomHex(16)
		data := map[string]string{"token": token, "mediaChannelKey": randomHex(480)}
		key := params["channelId"]
		if endpoint == polyv.EndpointChatToken {
			data["roomId"] = params["channelId"]
			data["childRoomEnabled"] = "N"
			data["chatApiDomain"] = "apichat.polyv.net"
			data["chatDomain"] = "chat.polyv.net"
			key = strings.Join([]string{params["channelId"], params["userId"], params["role"], params["origin"]}, "/")
		}
		s.count("ok", key)
		s.mu.Lock()
		s.issued[key] = append(s.issued[key], token)
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, reply{Code: 200, Status: "success", Message: "", Data: data})
	}
}

// check applies Polyv's checks in Polyv's order and returns the failure, if any.
func (s *Server) check(endpoint string, p map[string]string) (outcome string, code int, msg string) {
	switch {
	case strings.TrimSpace(p["appId"]) == "":
		return "appid_required", 400, "appId is required."
	case p["appId"] != s.appID:
		return "app_not_found", 400, "application not found."
	}
	ts, err := parseMillis(p["timestamp"])
	if err != nil || absDuration(s.now().Sub(ts)) > TimestampWindow {
		return "invalid_timestamp", 400, "invalid timestamp."
	}
	method := p["signatureMethod"]
	if method != "" && method != string(polyv.SignMD5) && method != string(polyv.SignSHA256) {
		return "invalid_signature", 403, "invalid signature."
	}
	if p["sign"] != polyv.Sign(p, s.secret) {
		return "invalid_signature", 403, "invalid signature."
	}
	if strings.TrimSpace(p["channelId"]) == "" {
		return "param_error", 400, "param validate error"
	}
	if endpoint == polyv.EndpointChatToken {
		if strings.TrimSpace(p["userId"]) == "" || !slices.Contains(polyv.Roles, p["role"]) {
			return "param_error", 400, "param validate error"
		}
	}
	s.mu.Lock()
	illegal := s.illegal[p["channelId"]]
	s.mu.Unlock()
	if illegal {
		return "illegal_channel", 403, "illegal channel id: " + p["channelId"]
	}
	return "", 0, ""
}

func (s *Server) fail(w http.ResponseWriter, outcome string, code int, msg string) {
	s.count(outcome, "")
	writeJSON(w, http.StatusOK, reply{Code: code, Status: "error", Message: msg, Data: ""})
}

func (s *Server) count(outcome, key string) {
	s.mu.Lock()
	s.stats.Outcomes[outcome]++
	if key != "" {
		s.stats.Keys[key]++
		s.stats.Issued++
	}
	s.mu.Unlock()
}

func (s *Server) serveStats(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.Stats())
}

// control is the body of POST /control; absent fields are left as they are.
type control struct {
	Latency         *string   `json:"latency"`
	ErrorRate       *float64  `json:"errorRate"`
	RateLimit       *int      `json:"rateLimit"`
	Ban             *string   `json:"ban"`
	IllegalChannels *[]string `json:"illegalChannels"`
}

func (s *Server) serveControl(w http.ResponseWriter, r *http.Request) {
	var c control
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&c); err != nil {
		http.Error(w, "body must be JSON: "+err.Error(), http.StatusBadRequest)
		return
	}
	if c.Latency != nil {
		d, err := time.ParseDuration(*c.Latency)
		if err != nil {
			http.Error(w, "latency: "+err.Error(), http.StatusBadRequest)
			return
		}
		s.SetLatency(d)
	}
	if c.ErrorRate != nil {
		s.SetErrorRate(*c.ErrorRate)
	}
	if c.RateLimit != nil {
		s.SetRateLimit(*c.RateLimit)
	}
	if c.Ban != nil {
		d, err := time.ParseDuration(*c.Ban)
		if err != nil {
			http.Error(w, "ban: "+err.Error(), http.StatusBadRequest)
			return
		}
		s.SetBan(d)
	}
	if c.IllegalChannels != nil {
		s.SetIllegalChannels(*c.IllegalChannels)
	}
	w.WriteHeader(http.StatusNoContent)
}

// TestServer is a simulator listening on a loopback port, like httptest.Server.
type TestServer struct {
	*httptest.Server
	Sim *Server
}

// NewTestServer starts a simulator on a loopback port. Close it when done.
func NewTestServer(opts Options) *TestServer {
	sim := New(opts)
	return &TestServer{Server: httptest.NewServer(sim), Sim: sim}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json;charset=UTF-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func parseMillis(s string) (time.Time, error) {
	if len(s) != 13 {
		return time.Time{}, fmt.Errorf("timestamp %q is not 13 digits", s)
	}
	var n int64
	for _, c := range s {
		if c < '0' || c > '9' {
			return time.Time{}, fmt.Errorf("timestamp %q is not a number", s)
		}
		n = n*10 + int64(c-'0')
	}
	return time.UnixMilli(n), nil
}

func absDuration(d time.Duration) time.Duration {
	if d < 0 {
		if d == math.MinInt64 {
			return math.MaxInt64
		}
		return -d
	}
	return d
}
