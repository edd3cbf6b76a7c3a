/* A thread per connection, closed by try-with-resources: the handler reads the request, writes
 * the reply, and the socket is closed as the block ends, whatever happens. Clean. The JVM opens
 * one AF_UNIX descriptor on its first connection and keeps it: a one-time +1 descriptor, not a
 * descriptor per connection, so not a leak.
 * Run: java CloseWithResources.java PORT */
import java.io.IOException;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;

public class CloseWithResources {
    static final byte[] REPLY =
            "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n".getBytes(StandardCharsets.US_ASCII);

    public static void main(String[] args) throws IOException {
        int port = Integer.parseInt(args.length > 0 ? args[0] : System.getenv("PORT"));
        try (ServerSocket srv = new ServerSocket(port, 1024, InetAddress.getByName("127.0.0.1"))) {
            while (true) {
                Socket conn = srv.accept();
                new Thread(() -> serve(conn)).start();
            }
        }
    }

    static void serve(Socket conn) {
        try (conn) {
            conn.getInputStream().read(new byte[4096]);
            conn.getOutputStream().write(REPLY);
        } catch (IOException e) {
            // the client went away: the socket is closed all the same
        }
    }
}
