// Path: Sources/SluiceGateway/GatewayFraming.swift — cutting gateway frames out of a TCP stream (server
// side: requests; client side: replies), never buffering more than one bounded frame.
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
/// 11 bytes). Never buffers more than `frameBytesMax + 4` bytes of one frame: an oversized length is
/// reported at once and everything after it is discarded.
struct GatewayFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = GatewayInboundFrame
    let frameBytesMax: Int
    let withStatus: Bool
    private var discarding = false

    init(frameBytesMax: Int, withStatus: Bool) {
        precondition(frameBytesMax >= GatewayProtocol.replyHeaderBytes, "a frame must fit its header")
        self.frameBytesMax = frameBytesMax
        self.withStatus = withStatus
    }

    private var headerBytes: Int { withStatus ? GatewayProtocol.replyHeaderBytes : GatewayProtocol.requestHeaderBytes }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if discarding {
            buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
            return .needMoreData
        }
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return .needMoreData }
        if Int(length) > frameBytesMax {
            // The opcode and request id are echoed when they already arrived; the body is never waited for.
            let header = buffer.readableBytes >= 4 + GatewayProtocol.requestHeaderBytes
            let opcode = header ? buffer.getInteger(at: buffer.readerIndex + 5, as: UInt8.self)! : 0
            let requestID = header ? buffer.getInteger(at: buffer.readerIndex + 6, as: UInt64.self)! : 0
            discarding = true
            buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
            context.fireChannelRead(NIOAny(GatewayInboundFrame.tooLarge(length: length, opcode: opcode, requestID: requestID)))
            return .needMoreData
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
