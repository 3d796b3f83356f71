import Hummingbird
import HummingbirdCore
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import ServiceLifecycle

/// Hummingbird's HTTP/1 channel with the WebSocket upgrade, plus an answer to requests
/// the HTTP parser rejects (a negative Content-Length, a header without a colon, ...) and
/// to `Expect: 100-continue`, and a bound on how long a shutdown waits for a connection.
///
/// The upgrade channel turns NIO's protocol error handling off and its upgrade handler
/// never sees the parser's error, so such a connection was neither answered nor closed:
/// a few thousand of them, from anyone who can reach the port and before any token check,
/// would use up the server's file descriptors.
struct StudioChannel: ServerChildChannel {
    let inner: HTTP1WebSocketUpgradeChannel

    /// The server builder for `Application(server:)`.
    static func builder<Router: HTTPResponderBuilder & _HB_SendableMetatype>(webSocketRouter: Router) -> HTTPServerBuilder
    where Router.Responder.Context: WebSocketRequestContext {
        let webSocketResponder = webSocketRouter.buildResponder()
        return HTTPServerBuilder { responder in
            StudioChannel(inner: HTTP1WebSocketUpgradeChannel(
                responder: responder, webSocketResponder: webSocketResponder,
                configuration: .init(http1: .init(additionalChannelHandlers: [ContinueHandler()]))))
        }
    }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<HTTP1WebSocketUpgradeChannel.Value> {
        inner.setup(channel: channel, logger: logger).flatMapThrowing { value in
            try channel.pipeline.syncOperations.addHandler(MalformedRequestHandler())
            return value
        }
    }

    /// How long a graceful shutdown (SIGTERM, Ctrl-C) lets a request that is still under way
    /// finish before its connection is closed.
    static let shutdownGrace: TimeAmount = .seconds(5)

    /// Hummingbird's shutdown closes idle connections and waits for every request under way
    /// to finish, however long that takes: an upload arriving slowly, or a video that a
    /// paused player has stopped reading, kept `talkie serve` from exiting, for ever. Such
    /// a connection is now closed once `shutdownGrace` has passed.
    func handle(value: HTTP1WebSocketUpgradeChannel.Value, logger: Logger) async {
        let channel = value.channel
        await withGracefulShutdownHandler {
            await inner.handle(value: value, logger: logger)
        } onGracefulShutdown: {
            channel.eventLoop.scheduleTask(in: Self.shutdownGrace) { channel.close(promise: nil) }
        }
    }
}

/// Last in the pipeline at first: answers a request the parser rejects with 400 and closes
/// the connection. Once a request has gone through (the upgrade negotiation is over and
/// Hummingbird's handlers follow this one), a parser error only closes the connection, as
/// a response may already be on its way.
final class MalformedRequestHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    typealias OutboundOut = HTTPServerResponsePart
    private var requestSeen = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        requestSeen = true
        context.fireChannelRead(data)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard error is HTTPParserError else { return context.fireErrorCaught(error) }
        guard !requestSeen else { return context.close(promise: nil) }
        var headers = HTTPHeaders()
        headers.add(name: "Connection", value: "close")
        headers.add(name: "Content-Length", value: "0")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .badRequest, headers: headers))), promise: nil)
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in bound.value.close(promise: nil) }
    }
}

/// Answers `Expect: 100-continue` with `100 Continue` as soon as the request's head arrives.
/// curl sends that header with every body over 1 MiB and, unanswered, waits a second
/// before each upload; NIO and Hummingbird leave the answer to the application, and a
/// route only runs once the body is on its way. Every request is told to go on: the
/// token and the route are checked when the request is handled, as without the header.
final class ContinueHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias OutboundOut = HTTPResponsePart

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head(let request) = unwrapInboundIn(data),
           request.headerFields[.expect]?.lowercased() == "100-continue" {
            context.writeAndFlush(wrapOutboundOut(.head(HTTPResponse(status: .continue))), promise: nil)
        }
        context.fireChannelRead(data)
    }
}
