package httpapi

import (
	"context"
	"encoding/json"
	"math"
	"mime"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/tokencache/tokencache/cache"
)

// chatTokenBody is the 200 body of a chat token.
type chatTokenBody struct {
	ChannelID        string    `json:"channelId"`
	UserID           string    `json:"userId"`
	Role             string    `json:"role"`
	Origin           string    `json:"origin"`
	Token            string    `json:"token"`
	MediaChannelKey  string    `json:"mediaChannelKey"`
	RoomID           string    `json:"roomId"`
	ChildRoomEnabled string    `json:"childRoomEnabled"`
	ChatAPIDomain    string    `json:"chatApiDomain"`
	ChatDomain       string    `json:"chatDomain"`
	IssuedAt         time.Time `json:"issuedAt"`
	ExpiresAt        time.Time `json:"expiresAt"`
}

func newChatTokenBody(r cache.Key, t cache.Token) chatTokenBody {
	return chatTokenBody{
		ChannelID: r.ChannelID, UserID: r.UserID, Role: r.Role, Origin: r.Origin,
		Token: t.Token, MediaChannelKey: t.MediaChannelKey, RoomID: t.RoomID, ChildRoomEnabled: t.ChildRoomEnabled,
		ChatAPIDomain: t.ChatAPIDomain, ChatDomain: t.ChatDomain,
		IssuedAt: t.IssuedAt.UTC().Truncate(time.Second), ExpiresAt: t.ExpiresAt().UTC().Truncate(time.Second),
	}
}

// Header values of the hit path, made once: assigning them allocates
// nothing, where Header.Set allocates a slice per call.
var (
	noStore           = []string{"no-store"}
	cacheStatusValues = func() map[cache.Result][]string {
		m := map[cache.Result][]string{}
		for _, r := range []cache.Result{cache.ResultHitLocal, cache.ResultHitRedis, cache.ResultStale, cache.ResultMiss,
			cache.ResultCoalesced, cache.ResultNegative, cache.ResultError, ""} {
			m[r] = []string{cacheStatus(r)}
		}
		return m
	}()
)

// cacheStatus is the RFC 9211 Cache-Status value for a result.
func cacheStatus(r cache.Result) string {
	switch r {
	case cache.ResultHitLocal, cache.ResultHitRedis:
		return "tokencache; hit"
	case cache.ResultStale:
		return "tokencache; fwd=stale"
	case cache.ResultMiss:
		return "tokencache; fwd=miss; stored"
	case cache.ResultCoalesced:
		return "tokencache; fwd=miss; collapsed"
	case cache.ResultNegative:
		return "tokencache; hit; detail=negative"
	}
	return "tokencache; fwd=miss"
}

func (s *server) getChatToken(c echo.Context) error {
	k, err := chatKeyFromQuery(c.Param("channelId"), c.Request().URL.RawQuery)
	if err != nil {
		return err
	}
	if err := checkScope(c, k); err != nil {
		return err
	}
	limit, err := s.limit(c, s.opts.RequestTimeout)
	if err != nil {
		return err
	}
	// A token in memory needs no deadline: only a miss gets a context.
	tok, res, ok, err := s.opts.Cache.Peek(k)
	if !ok {
		ctx, cancel := context.WithTimeout(callerContext(c, RouteGet, false), limit)
		defer cancel()
		tok, res, err = s.opts.Cache.Get(ctx, k)
	}
	s.opts.Auditor.served(c, RouteGet, k, res, err)
	h := c.Response().Header()
	h["Cache-Status"] = cacheStatusValues[res] // shared and never changed: no allocation per hit
	if err != nil {
		return err
	}
	h["Cache-Control"] = noStore
	// The body is encoded once per cached token, then reused.
	body := tok.Rendered.Load()
	if body == nil {
		body, _ = json.Marshal(newChatTokenBody(k, tok)) // strings and times cannot fail
		tok.Rendered.Store(body)
	}
	return c.JSONBlob(http.StatusOK, body)
}

func (s *server) deleteChatToken(c echo.Context) error {
	k, err := chatKeyFromQuery(c.Param("channelId"), c.Request().URL.RawQuery)
	if err != nil {
		return err
	}
	if err := checkScope(c, k); err != nil {
		return err
	}
	ctx, cancel, err := s.deadline(c, c.Request().Context(), s.opts.RequestTimeout)
	if err != nil {
		return err
	}
	defer cancel()
	err = s.opts.Cache.Delete(ctx, k)
	s.opts.Auditor.action(c, RouteDelete, k, err)
	if err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

// channelTokenBody is the 200 body of the old channel token.
type channelTokenBody struct {
	ChannelID       string    `json:"channelId"`
	Token           string    `json:"token"`
	MediaChannelKey string    `json:"mediaChannelKey"`
	IssuedAt        time.Time `json:"issuedAt"`
	ExpiresAt       time.Time `json:"expiresAt"`
}

// deprecatedSince is when the old get-token route was deprecated (RFC 9745).
const deprecatedSince = "@1767225600" // 2026-01-01T00:00:00Z

func (s *server) getChannelToken(c echo.Context) error {
	channelID := c.Param("channelId")
	if err := validateChannelID(channelID); err != nil {
		return err
	}
	if err := readQuery(c.Request().URL.RawQuery, nil); err != nil {
		return err
	}
	if err := checkChannel(c, channelID); err != nil {
		return err
	}
	h := c.Response().Header()
	h.Set("Deprecation", deprecatedSince)
	h.Set("Link", `</v1/channels/`+channelID+`/chat-token>; rel="successor-version"`)
	ctx, cancel, err := s.deadline(c, callerContext(c, RouteLegacy, false), s.opts.RequestTimeout)
	if err != nil {
		return err
	}
	defer cancel()
	tok, res, err := s.opts.Cache.Get(ctx, cache.ChannelKey(channelID))
	s.opts.Auditor.action(c, RouteLegacy, cache.ChannelKey(channelID), err)
	h.Set("Cache-Status", cacheStatus(res))
	if err != nil {
		return err
	}
	h.Set("Cache-Control", "no-store")
	return c.JSON(http.StatusOK, channelTokenBody{
		ChannelID: channelID, Token: tok.Token, MediaChannelKey: tok.MediaChannelKey,
		IssuedAt: tok.IssuedAt.UTC().Truncate(time.Second), ExpiresAt: tok.ExpiresAt().UTC().Truncate(time.Second),
	})
}

// bulkItem is one request of a bulk call.
type bulkItem struct {
	UserID string `json:"userId"`
	Role   string `json:"role"`
	Origin string `json:"origin"`
}

// bulkError is a failed item of a bulk call.
type bulkError struct {
	UserID string    `json:"userId"`
	Role   string    `json:"role"`
	Origin string    `json:"origin"`
	Error  *apiError `json:"error"`
}

func (s *server) bulkChatTokens(c echo.Context) error {
	channelID := c.Param("channelId")
	if err := validateChannelID(channelID); err != nil {
		return err
	}
	if err := readQuery(c.Request().URL.RawQuery, nil); err != nil {
		return err
	}
	if err := checkChannel(c, channelID); err != nil {
		return err
	}
	if ct := c.Request().Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			return &apiError{Status: http.StatusUnsupportedMediaType, Code: codeInvalidArgument, Field: "Content-Type",
				Message: "the body must be JSON: send Content-Type: application/json"}
		}
	}
	items, err := decodeBulk(c.Request().Body)
	if err != nil {
		return err
	}

	// Validate every item before any work; a bad item fails alone.
	results := make([]any, len(items))
	keys := make([]cache.Key, len(items))
	for i, it := range items {
		keys[i] = cache.Key{ChannelID: channelID, UserID: it.UserID, Role: it.Role, Origin: it.Origin}
		err := validateChat(keys[i])
		if err == nil {
			err = checkRole(c, it.Role)
		}
		if err != nil {
			results[i] = bulkError{UserID: it.UserID, Role: it.Role, Origin: it.Origin, Error: toAPIError(err)}
		}
	}

	// Bulk prefetch waits its turn at the rate limit, up to BulkTimeout.
	ctx, cancel, err := s.deadline(c, callerContext(c, RouteBulk, true), s.opts.BulkTimeout)
	if err != nil {
		return err
	}
	defer cancel()
	sem := make(chan struct{}, s.opts.BulkConcurrency)
	var wg sync.WaitGroup
	for i, k := range keys {
		if results[i] != nil {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			tok, res, err := s.opts.Cache.Get(ctx, k)
			s.opts.Auditor.served(c, RouteBulk, k, res, err)
			if err != nil {
				results[i] = bulkError{UserID: k.UserID, Role: k.Role, Origin: k.Origin, Error: toAPIError(err)}
				return
			}
			results[i] = newChatTokenBody(k, tok)
		}()
	}
	wg.Wait()
	c.Response().Header().Set("Cache-Control", "no-store")
	return c.JSON(http.StatusOK, map[string][]any{"results": results})
}

func (s *server) healthz(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
}

// readyz reports Redis's state. The service answers without Redis, from its
// local cache and Polyv, so a Redis outage reports "degraded" with 200, not
// 503: pulling every instance out of the load balancer would be worse.
func (s *server) readyz(c echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), time.Second)
	defer cancel()
	body := map[string]any{
		"status":        "ok",
		"redis":         "ok",
		"redisCircuit":  s.opts.Cache.RedisCircuit(),
		"embeddedRedis": s.opts.EmbeddedRedis,
		"encryption":    "on",
		"config":        s.opts.Keys.Status(),
		"polyv":         s.opts.Cache.PolyvState(),
	}
	if s.opts.EncryptionOff {
		body["encryption"] = "off"
	}
	if err := s.opts.Cache.Ready(ctx); err != nil {
		body["status"] = "degraded"
		body["redis"] = "unreachable"
	}
	return c.JSON(http.StatusOK, body)
}

// checkScope refuses a chat-token request outside its key's channels or roles.
func checkScope(c echo.Context, r cache.Key) error {
	if err := checkChannel(c, r.ChannelID); err != nil {
		return err
	}
	return checkRole(c, r.Role)
}

// requestTimeoutHeader carries the caller's own deadline, in seconds.
const requestTimeoutHeader = "Request-Timeout"

// answerMargin is the most a request's work stops before the caller's
// Request-Timeout, to send the answer in.
const answerMargin = 50 * time.Millisecond

// deadline bounds a request by the smaller of limit and the caller's
// Request-Timeout, so that no work goes on after the caller has given up.
func (s *server) deadline(c echo.Context, ctx context.Context, limit time.Duration) (context.Context, context.CancelFunc, error) {
	limit, err := s.limit(c, limit)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	return ctx, cancel, nil
}

// limit is the smaller of limit and the caller's Request-Timeout.
func (s *server) limit(c echo.Context, limit time.Duration) (time.Duration, error) {
	if v := c.Request().Header.Get(requestTimeoutHeader); v != "" {
		secs, err := strconv.ParseFloat(v, 64)
		if err != nil || secs <= 0 || math.IsInf(secs, 0) || math.IsNaN(secs) {
			return 0, invalid(requestTimeoutHeader, "Request-Timeout must be a positive number of seconds, such as 2 or 0.5")
		}
		if given := time.Duration(secs * float64(time.Second)); given < limit {
			// Answer a little before the caller gives up, so that it
			// reads the answer (a 504 or 503 with Retry-After included).
			limit = given - min(given/20, answerMargin)
		}
	}
	return limit, nil
}
