// Path: Sources/SluiceGateway/UploadFraming.swift — request framing for servers that take write data:
// requests are small except the data-carrying opcodes (`uploadData` on the last hop, `append` from
// clients), which get a larger bound of their own. Otherwise as `GatewayFrameDecoder`.
import NIOCore

/// Cuts request frames (10-byte header) by their length word. A frame above `frameBytesMax` is taken
/// only when its opcode is one of `largeOpcodes` and it is within `largeFrameBytesMax`; the opcode is
/// waited for (14 bytes) before deciding. Anything larger is reported `tooLarge` at once and the rest
/// of the stream discarded, as `GatewayFrameDecoder` does. Never buffers more than one bounded frame.
struct RequestFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = GatewayInboundFrame
    let frameBytesMax: Int
    let largeOpcodes: Set<UInt8>
    let largeFrameBytesMax: Int
    private var discarding = false

    init(frameBytesMax: Int, largeOpcodes: Set<UInt8>, largeFrameBytesMax: Int) {
        precondition(frameBytesMax >= GatewayProtocol.requestHeaderBytes, "a frame must fit its header")
        precondition(largeFrameBytesMax >= frameBytesMax, "the large bound is the larger one")
        self.frameBytesMax = frameBytesMax
        self.largeOpcodes = largeOpcodes
        self.largeFrameBytesMax = largeFrameBytesMax
    }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if discarding {
            buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
            return .needMoreData
        }
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return .needMoreData }
        let header = buffer.readableBytes >= 4 + GatewayProtocol.requestHeaderBytes
        if Int(length) > frameBytesMax {
            if Int(length) <= largeFrameBytesMax && !header { return .needMoreData }
            let opcode = header ? buffer.getInteger(at: buffer.readerIndex + 5, as: UInt8.self)! : 0
            if !(Int(length) <= largeFrameBytesMax && largeOpcodes.contains(opcode)) {
                let requestID = header ? buffer.getInteger(at: buffer.readerIndex + 6, as: UInt64.self)! : 0
                discarding = true
                buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
                context.fireChannelRead(NIOAny(GatewayInboundFrame.tooLarge(length: length, opcode: opcode, requestID: requestID)))
                return .needMoreData
            }
        }
        guard buffer.readableBytes >= 4 + Int(length) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 4)
        guard Int(length) >= GatewayProtocol.requestHeaderBytes else {
            buffer.moveReaderIndex(forwardBy: Int(length))
            context.fireChannelRead(NIOAny(GatewayInboundFrame.tooShort(length: length)))
            return .continue
        }
        let version = buffer.readInteger(as: UInt8.self)!
        let opcode = buffer.readInteger(as: UInt8.self)!
        let requestID = buffer.readInteger(as: UInt64.self)!
        let body = buffer.readSlice(length: Int(length) - GatewayProtocol.requestHeaderBytes)!
        context.fireChannelRead(NIOAny(GatewayInboundFrame.frame(version: version, opcode: opcode, requestID: requestID,
                                                                 status: nil, body: body)))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
        return .needMoreData
    }
}
