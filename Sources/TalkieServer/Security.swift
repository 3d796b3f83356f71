import Foundation
import Hummingbird
import HTTPTypes

/// Refuses requests with a foreign Host header (DNS rebinding) and, when the server has a
/// token, requests without it (compared in constant time). A `?token=` on a page load sets
/// the cookie so the page's own requests carry it.
struct GuardMiddleware<Context: RequestContext>: RouterMiddleware {
    let token: String?
    let allowedHosts: Set<String>

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        // A missing Host (HTTP/1.0 tools) is no DNS-rebinding vector: browsers always send one.
        let host = Self.hostname((request.head.authority ?? request.headers[HTTPField.Name("Host")!] ?? "").lowercased())
        guard host.isEmpty || allowedHosts.contains(host) || allowedHosts.contains("*") else {
            return APIResponse.error(StudioError(403, "request.foreign_host", "requests for host '\(host)' are refused; use the address the server printed"))
        }
        guard let token else { return try await Self.enveloped { try await next(request, context) } }
        let query = request.uri.queryParameters["token"].map(String.init)
        let bearer = request.headers[.authorization].flatMap { $0.hasPrefix("Bearer ") ? String($0.dropFirst(7)) : nil }
        let cookie = request.headers[.cookie].flatMap { header in
            header.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) }
                .first { $0.hasPrefix("talkie_token=") }.map { String($0.dropFirst("talkie_token=".count)) }
        }
        guard [query, bearer, cookie].contains(where: { $0.map { constantTimeEqual($0, token) } == true }) else {
            return APIResponse.error(StudioError(401, "request.unauthorized", "this server needs its access token: open the URL it printed (…?token=…)"))
        }
        var response = try await Self.enveloped { try await next(request, context) }
        if query != nil {
            response.headers[.setCookie] = "talkie_token=\(token); Path=/; HttpOnly; SameSite=Strict"
        }
        return response
    }

    /// Every error in the API's envelope, also the router's own "no such route".
    static func enveloped(_ next: () async throws -> Response) async throws -> Response {
        do { return try await next() } catch let error as HTTPError where error.status == .notFound {
            return APIResponse.error(StudioError(404, "request.not_found", "no such page or endpoint"))
        }
    }

    /// The host names a request may name: the bound address and the loopback names; any
    /// host when bound to all interfaces (the token then guards). Ports do not matter: a
    /// rebinding attack needs a foreign name.
    static func hosts(bind: String, extra: [String] = []) -> Set<String> {
        if bind == "0.0.0.0" || bind == "::" { return ["*"] }
        return Set((["localhost", "127.0.0.1", "::1", bind] + extra).map { $0.lowercased() })
    }

    /// The name in a Host header, without its port or IPv6 brackets.
    static func hostname(_ header: String) -> String {
        if header.hasPrefix("["), let end = header.firstIndex(of: "]") {
            return String(header[header.index(after: header.startIndex)..<end])
        }
        if let colon = header.lastIndex(of: ":"), header[header.index(after: colon)...].allSatisfy(\.isNumber) {
            return String(header[..<colon])
        }
        return header
    }
}

/// Compares two strings in time that depends only on their lengths.
func constantTimeEqual(_ a: String, _ b: String) -> Bool {
    let x = Array(a.utf8), y = Array(b.utf8)
    guard x.count == y.count else { return false }
    var difference: UInt8 = 0
    for index in x.indices { difference |= x[index] ^ y[index] }
    return difference == 0
}

/// JSON responses in the API's shapes.
enum APIResponse {
    static func json(_ value: some Encodable, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json; charset=utf-8", .cacheControl: "no-store"],
                 body: .init(byteBuffer: ByteBuffer(data: APIJSON.encode(value))))
    }

    /// A reply with JSON already encoded.
    static func json(encoded: Data) -> Response {
        Response(status: .ok, headers: [.contentType: "application/json; charset=utf-8", .cacheControl: "no-store"],
                 body: .init(byteBuffer: ByteBuffer(data: encoded)))
    }

    static func error(_ error: StudioError) -> Response {
        json(["error": ["code": error.code, "message": error.message]], status: .init(code: error.httpStatus))
    }
}
