package httpapi

import (
	"errors"
	"log/slog"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/tokencache/tokencache/budget"
	"github.com/tokencache/tokencache/cache"
	"github.com/tokencache/tokencache/polyv"
)

// Error codes of the API, as in the error table of docs/api.md.
const (
	codeInvalidArgument       = "invalid_argument"
	codeUnauthenticated       = "unauthenticated"
	codePermissionDenied      = "permission_denied"
	codeNotFound              = "not_found"
	codeMethodNotAllowed      = "method_not_allowed"
	codeUpstreamRejected      = "upstream_rejected"
	codeUpstreamMisconfigured = "upstream_misconfigured"
	codeUpstreamError         = "upstream_error"
	codeUpstreamUnavailable   = "upstream_unavailable"
	codeUpstreamTimeout       = "upstream_timeout"
	codeInternal              = "internal"
)

// ErrorTable is the API's error table, the one source of it: the codes each
// status may carry. Tests hold the Go client's codes, tokenload's checks and
// the OpenAPI spec's enum to it.
var ErrorTable = map[int][]string{
	http.StatusBadRequest:            {codeInvalidArgument},
	http.StatusUnauthorized:          {codeUnauthenticated},
	http.StatusForbidden:             {codePermissionDenied},
	http.StatusNotFound:              {codeNotFound},
	http.StatusMethodNotAllowed:      {codeMethodNotAllowed},
	http.StatusRequestEntityTooLarge: {codeInvalidArgument},
	http.StatusUnsupportedMediaType:  {codeInvalidArgument},
	http.StatusUnprocessableEntity:   {codeUpstreamRejected},
	http.StatusInternalServerError:   {codeInternal},
	http.StatusBadGateway:            {codeUpstreamMisconfigured, codeUpstreamError},
	http.StatusServiceUnavailable:    {codeUpstreamUnavailable},
	http.StatusGatewayTimeout:        {codeUpstreamTimeout},
}

// apiError is the body of every error response.
type apiError struct {
	Status          int    `json:"-"`
	RetryAfter      string `json:"-"`
	Code            string `json:"code"`
	Message         string `json:"message"`
	Field           string `json:"field,omitempty"`
	UpstreamCode    int    `json:"upstreamCode,omitempty"`
	UpstreamMessage string `json:"upstreamMessage,omitempty"`
}

func (e *apiError) Error() string { return e.Code + ": " + e.Message }

func invalid(field, msg string) *apiError {
	return &apiError{Status: http.StatusBadRequest, Code: codeInvalidArgument, Field: field, Message: msg}
}

// unavailableMessages say, for each reason no Polyv call could be made,
// what happened and what to do.
var unavailableMessages = map[budget.Reason]string{
	budget.ReasonQueue:      "Polyv call budget: the queue ahead of this request is longer than its deadline; retry after Retry-After seconds",
	budget.ReasonCooldown:   "Polyv rate-limited this service: no Polyv calls until the cool-down ends; retry after Retry-After seconds",
	budget.ReasonKeyRate:    "this API key's own Polyv rate (rate in the keys file) is used up until after the request's deadline; retry after Retry-After seconds",
	budget.ReasonBulkShare:  "bulk requests used their share of the Polyv budget (TOKENCACHE_BULK_SHARE) until after the deadline; retry after Retry-After seconds",
	budget.ReasonDeleteRate: "this API key made too many DELETEs (TOKENCACHE_DELETE_RATE per second); retry after Retry-After seconds",
}

// polyvRateLimitRetry is the Retry-After sent when Polyv itself refused us
// for rate: its ban lasts minutes, so callers should back off well.
const polyvRateLimitRetry = "60"

// toAPIError maps any error to its response. This is the one place where
// errors become HTTP statuses.
func toAPIError(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	var he *echo.HTTPError
	if errors.As(err, &he) {
		switch he.Code {
		case http.StatusNotFound:
			return &apiError{Status: he.Code, Code: codeNotFound, Message: "no such route"}
		case http.StatusMethodNotAllowed:
			return &apiError{Status: he.Code, Code: codeMethodNotAllowed, Message: "method not allowed on this route"}
		case http.StatusRequestEntityTooLarge:
			return &apiError{Status: he.Code, Code: codeInvalidArgument, Field: "body", Message: "request body is too large"}
		case http.StatusUnauthorized:
			return &apiError{Status: he.Code, Code: codeUnauthenticated, Message: "missing or invalid API key"}
		}
		if he.Code < 500 {
			return &apiError{Status: he.Code, Code: codeInvalidArgument, Message: http.StatusText(he.Code)}
		}
	}
	var unavailable *cache.UnavailableError
	if errors.As(err, &unavailable) {
		return &apiError{Status: http.StatusServiceUnavailable, Code: codeUpstreamUnavailable, RetryAfter: unavailable.RetryAfterSeconds(),
			Message: unavailableMessages[unavailable.Reason]}
	}
	if errors.Is(err, cache.ErrRedisUnavailable) {
		return &apiError{Status: http.StatusServiceUnavailable, Code: codeUpstreamUnavailable, RetryAfter: "5",
			Message: "Redis is unavailable; retry later"}
	}
	switch polyv.Classify(err) {
	case polyv.KindRejected:
		var pe *polyv.APIError
		errors.As(err, &pe)
		return &apiError{Status: http.StatusUnprocessableEntity, Code: codeUpstreamRejected,
			Message: "Polyv rejected this request's channel or parameters", UpstreamCode: pe.Code, UpstreamMessage: pe.Message}
	case polyv.KindMisconfigured:
		return &apiError{Status: http.StatusBadGateway, Code: codeUpstreamMisconfigured,
			Message: "Polyv rejected the service's credentials, signature or clock; the operator must check POLYV_APP_ID, POLYV_APP_SECRET and the server clock"}
	case polyv.KindRateLimited:
		return &apiError{Status: http.StatusServiceUnavailable, Code: codeUpstreamUnavailable, RetryAfter: polyvRateLimitRetry,
			Message: "Polyv is rate limiting this service; retry later"}
	case polyv.KindServer, polyv.KindMalformed, polyv.KindNetwork:
		return &apiError{Status: http.StatusBadGateway, Code: codeUpstreamError, Message: "Polyv failed to answer properly; retry later"}
	case polyv.KindTimeout, polyv.KindCanceled:
		return &apiError{Status: http.StatusGatewayTimeout, Code: codeUpstreamTimeout, Message: "Polyv did not answer in time"}
	}
	return &apiError{Status: http.StatusInternalServerError, Code: codeInternal, Message: "internal error"}
}

// errorHandler writes every error as {"error":{...}} and logs server-side
// failures; the client never sees internal text.
func errorHandler(log *slog.Logger, quiet *quietLog) echo.HTTPErrorHandler {
	return func(err error, c echo.Context) {
		if c.Response().Committed {
			return
		}
		ae := toAPIError(err)
		if ae.Status >= 500 && quiet.allow(c.Request().Context(), "request failed", ae.Status) {
			log.LogAttrs(c.Request().Context(), slog.LevelError, "request failed",
				slog.String("request_id", c.Response().Header().Get(echo.HeaderXRequestID)),
				slog.String("route", c.Path()), slog.Int("status", ae.Status),
				slog.String("code", ae.Code), slog.String("error", err.Error()))
		}
		if ae.RetryAfter != "" {
			c.Response().Header().Set("Retry-After", ae.RetryAfter)
		}
		c.Response().Header().Set("Cache-Control", "no-store")
		if c.Request().Method == http.MethodHead {
			_ = c.NoContent(ae.Status)
			return
		}
		_ = c.JSON(ae.Status, map[string]*apiError{"error": ae})
	}
}
