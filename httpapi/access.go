package httpapi

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"slices"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"

	"github.com/tokencache/tokencache/cache"
)

// requestContext is the echo context with the request's own fields typed,
// instead of in echo's per-request map, which costs an allocation to make.
// The observer, outermost, makes it.
type requestContext struct {
	echo.Context
	key *APIKey // set by auth
}

func withRequestContext(c echo.Context) *requestContext { return &requestContext{Context: c} }

func setAPIKey(c echo.Context, k *APIKey) {
	if rc, ok := c.(*requestContext); ok {
		rc.key = k
	}
}

// anonymous is the key of requests when auth is off on purpose.
var anonymous = &APIKey{Name: "anonymous"}

func denied(format string, args ...any) *apiError {
	return &apiError{Status: http.StatusForbidden, Code: codePermissionDenied, Message: fmt.Sprintf(format, args...)}
}

// auth finds the request's API key and checks that it may use route. The
// key is compared by hash, in constant time, against every key in force.
func (s *server) auth(route string) echo.MiddlewareFunc {
	unauthenticated := &apiError{Status: http.StatusUnauthorized, Code: codeUnauthenticated,
		Message: "missing or invalid API key: send Authorization: Bearer <key>"}
	check := func(k *APIKey, c echo.Context, next echo.HandlerFunc) error {
		setAPIKey(c, k)
		if k == nil {
			return unauthenticated
		}
		if !k.allowsRoute(route) {
			return denied("this API key may not use the %s route", route)
		}
		return next(c)
	}
	if s.opts.AuthDisabled {
		return func(next echo.HandlerFunc) echo.HandlerFunc {
			return func(c echo.Context) error { return check(anonymous, c, next) }
		}
	}
	keyAuth := middleware.KeyAuthWithConfig(middleware.KeyAuthConfig{
		Validator: func(presented string, c echo.Context) (bool, error) {
			k, ok := s.opts.Keys.Load().lookup(presented)
			if ok {
				setAPIKey(c, k)
			}
			return ok, nil
		},
		ErrorHandler: func(error, echo.Context) error { return unauthenticated },
	})
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		authed := keyAuth(func(c echo.Context) error { return check(apiKey(c), c, next) })
		return func(c echo.Context) error {
			// One key per request: with several, one good key would let
			// the others through unread.
			if len(c.Request().Header.Values(echo.HeaderAuthorization)) > 1 {
				return invalid("Authorization", "send one Authorization header, not several")
			}
			return authed(c)
		}
	}
}

// apiKey is the request's API key; nil before auth or when it failed.
func apiKey(c echo.Context) *APIKey {
	if rc, ok := c.(*requestContext); ok {
		return rc.key
	}
	return nil
}

// checkChannel and checkRole refuse what the request's key may not reach.
// The message names what is refused, never the key's scope.
func checkChannel(c echo.Context, channelID string) error {
	if k := apiKey(c); k != nil && !k.allowsChannel(channelID) {
		return denied("this API key may not access channel %q", channelID)
	}
	return nil
}

func checkRole(c echo.Context, role string) error {
	if k := apiKey(c); k != nil && !k.allowsRole(role) {
		return denied("this API key may not request role %q", role)
	}
	return nil
}

// callerContext tells the cache whose Polyv budget a request spends.
func callerContext(c echo.Context, route string, bulk bool) context.Context {
	ctx := c.Request().Context()
	k := apiKey(c)
	if k == nil {
		return ctx
	}
	return cache.WithCaller(ctx, cache.Caller{Name: k.Name, Route: route, Rate: k.Rate, Bulk: bulk})
}

// Auditor writes the audit trail: one record (msg=audit) for every Polyv
// fetch and for every token served for a privileged role. A userId appears
// only as a keyed hash, so records can be matched without naming anyone.
type Auditor struct {
	log *slog.Logger
	key []byte
}

// NewAuditor returns an Auditor that hashes userIds with key.
func NewAuditor(log *slog.Logger, key []byte) *Auditor { return &Auditor{log: log, key: key} }

// privilegedRoles are the roles whose every token served is audited.
var privilegedRoles = []string{"teacher", "admin", "assistant"}

func (a *Auditor) userHash(userID string) string {
	m := hmac.New(sha256.New, a.key)
	m.Write([]byte(userID))
	return hex.EncodeToString(m.Sum(nil))[:32]
}

// Fetch records one Polyv call; the cache calls it (cache.Options.OnFetch).
func (a *Auditor) Fetch(ctx context.Context, k cache.Key, outcome string) {
	caller := cache.CallerFrom(ctx)
	name, route := caller.Name, caller.Route
	if name == "" {
		name, route = "tokencache", "refresh"
	}
	a.record(ctx, name, route, k, "fetch", outcome)
}

// served records a token served for a privileged role.
func (a *Auditor) served(c echo.Context, route string, k cache.Key, res cache.Result, err error) {
	if a == nil || !slices.Contains(privilegedRoles, k.Role) {
		return
	}
	outcome := "ok"
	if err != nil {
		outcome = toAPIError(err).Code
	}
	name := "-"
	if key := apiKey(c); key != nil {
		name = key.Name
	}
	a.record(c.Request().Context(), name, route, k, string(res), outcome)
}

// action records a DELETE or a legacy token served, whoever asked and
// whatever the access log's level: key, route and channel (and the role of
// a deleted token), never the userId or the token.
func (a *Auditor) action(c echo.Context, route string, k cache.Key, err error) {
	if a == nil {
		return
	}
	outcome, name := "ok", "-"
	if err != nil {
		outcome = toAPIError(err).Code
	}
	if key := apiKey(c); key != nil {
		name = key.Name
	}
	attrs := []slog.Attr{slog.String("key", name), slog.String("route", route), slog.String("channel", k.ChannelID)}
	if k.Kind == cache.KindChat {
		attrs = append(attrs, slog.String("role", k.Role))
	}
	a.log.LogAttrs(c.Request().Context(), slog.LevelInfo, "audit", append(attrs, slog.String("outcome", outcome))...)
}

func (a *Auditor) record(ctx context.Context, keyName, route string, k cache.Key, result, outcome string) {
	if a == nil {
		return
	}
	attrs := []slog.Attr{slog.String("key", keyName), slog.String("route", route), slog.String("channel", k.ChannelID)}
	if k.Kind == cache.KindChat {
		attrs = append(attrs, slog.String("role", k.Role), slog.String("origin", k.Origin), slog.String("user", a.userHash(k.UserID)))
	}
	attrs = append(attrs, slog.String("result", result), slog.String("outcome", outcome))
	a.log.LogAttrs(ctx, slog.LevelInfo, "audit", attrs...)
}
