// Path: Sources/SluiceGateway/GatewayFraming.swift — cutting gateway frames out of a TCP stream (server
// side: requests, with a larger bound for the data-carrying opcodes; client side: replies), never
// buffering more than one bounded frame. One decoder for both servers and both clients.
import NIOCore

/// A frame cut from the stream by `GatewayFrameDecoder`.
enum GatewayInboundFrame: Sendable {
    /// `header` holds version, opcode, request id (and the status, for a reply); `body` the rest.
    case frame(version: UInt8, opcode: UInt8, requestID: UInt64, status: UInt8?, body: ByteBuffer)
    /// Length word below the header: the frame was skipped, the stream stays in sync.
    case tooShort(length: UInt32)
    /// Length word above the bound: nothing more is read from this connection.
    case tooLarge(length: UInt32, opcode: UInt8, requestID: UInt64)
}

/// Cuts frames by their length word: requests (`withStatus` false, 10-byte header) or replies (true,
/// 11 bytes). A frame above `frameBytesMax` is taken only when its opcode is one of `largeOpcodes`
/// (requests that carry write data: `uploadData` on the last hop, `append` from clients) and it is
/// within `largeFrameBytesMax`; the opcode is waited for (14 bytes) before deciding. Anything larger is
/// reported `tooLarge` at once (opcode and request id echoed when they already arrived; the body is
/// never waited for) and everything after it is discarded. Never buffers more than one bounded frame.
struct GatewayFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = GatewayInboundFrame
    let frameBytesMax: Int
    let withStatus: Bool
    let largeOpcodes: Set<UInt8>
    let largeFrameBytesMax: Int
    private var discarding = false

    init(frameBytesMax: Int, withStatus: Bool, largeOpcodes: Set<UInt8> = [], largeFrameBytesMax: Int? = nil) {
        precondition(frameBytesMax >= GatewayProtocol.replyHeaderBytes, "a frame must fit its header")
        precondition((largeFrameBytesMax ?? frameBytesMax) >= frameBytesMax, "the large bound is the larger one")
        self.frameBytesMax = frameBytesMax
        self.withStatus = withStatus
        self.largeOpcodes = largeOpcodes
        self.largeFrameBytesMax = largeFrameBytesMax ?? frameBytesMax
    }

    private var headerBytes: Int { withStatus ? GatewayProtocol.replyHeaderBytes : GatewayProtocol.requestHeaderBytes }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if discarding {
            buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
            return .needMoreData
        }
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return .needMoreData }
        if Int(length) > frameBytesMax {
            // Version, opcode and request id sit at the same offsets in requests and replies.
            let header = buffer.readableBytes >= 4 + GatewayProtocol.requestHeaderBytes
            let large = Int(length) <= largeFrameBytesMax && !largeOpcodes.isEmpty
            if large && !header { return .needMoreData }
            let opcode = header ? buffer.getInteger(at: buffer.readerIndex + 5, as: UInt8.self)! : 0
            if !(large && largeOpcodes.contains(opcode)) {
                let requestID = header ? buffer.getInteger(at: buffer.readerIndex + 6, as: UInt64.self)! : 0
                discarding = true
                buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
                context.fireChannelRead(NIOAny(GatewayInboundFrame.tooLarge(length: length, opcode: opcode, requestID: requestID)))
                return .needMoreData
            }
        }
        guard buffer.readableBytes >= 4 + Int(length) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 4)
        guard Int(length) >= headerBytes else {
            buffer.moveReaderIndex(forwardBy: Int(length))
            context.fireChannelRead(NIOAny(GatewayInboundFrame.tooShort(length: length)))
            return .continue
        }
        let version = buffer.readInteger(as: UInt8.self)!
        let opcode = buffer.readInteger(as: UInt8.self)!
        let requestID = buffer.readInteger(as: UInt64.self)!
        let status = withStatus ? buffer.readInteger(as: UInt8.self)! : nil
        let body = buffer.readSlice(length: Int(length) - headerBytes)!
        context.fireChannelRead(NIOAny(GatewayInboundFrame.frame(version: version, opcode: opcode, requestID: requestID,
                                                                 status: status, body: body)))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        // A partial frame at EOF is dropped: nothing of it was acted on.
        while try decode(context: context, buffer: &buffer) == .continue {}
        buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
        return .needMoreData
    }
}
