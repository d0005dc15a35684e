# Multi-stage build: static binaries on a small, non-root base, one image
# per binary. Base images are pinned by digest; to move to newer ones, run
#   crane digest golang:1.26
#   crane digest gcr.io/distroless/static-debian12:nonroot
# and replace the digests below.
FROM golang:1.26@sha256:595c7847cff97c9a9e76f015083c481d26078f961c9c8dca3923132f51fe12f1 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# The build context holds no .git: give the version as a build argument,
#   docker build --build-arg VERSION=$(git describe --tags --always --dirty) .
ARG VERSION=unknown
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X github.com/tokencache/tokencache/internal/cli.stamped=${VERSION}" -o /out/ ./cmd/...

FROM gcr.io/distroless/static-debian12:nonroot@sha256:afa5c872c891853ca7fcf1f12c3edb23f7eeef36189728842dd51042ff57f7ab AS base
USER nonroot:nonroot

# docker build --target polyvsim: the Polyv simulator.
FROM base AS polyvsim
COPY --from=build /out/polyvsim /usr/local/bin/polyvsim
EXPOSE 8090
ENTRYPOINT ["/usr/local/bin/polyvsim"]

# docker build --target tokenload: the load generator.
FROM base AS tokenload
COPY --from=build /out/tokenload /usr/local/bin/tokenload
ENTRYPOINT ["/usr/local/bin/tokenload"]

# The default target: the server, and nothing else.
FROM base AS tokencache
COPY --from=build /out/tokencache /usr/local/bin/tokencache
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/tokencache"]
