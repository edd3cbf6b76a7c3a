/* A thread per connection that never closes: the handler reads the request, replies, reads to
 * EOF and returns; the Socket is kept in a list (for "statistics"), so not even the garbage
 * collector closes it. The JVM never forks: CLOSE-WAIT, held by the java process itself, one
 * more descriptor per connection.
 * Run: java ThreadLeak.java PORT */
import java.io.IOException;
import java.io.InputStream;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

public class ThreadLeak {
    static final byte[] REPLY =
            "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n".getBytes(StandardCharsets.US_ASCII);
    static final List<Socket> SEEN = Collections.synchronizedList(new ArrayList<>());

    public static void main(String[] args) throws IOException {
        int port = Integer.parseInt(args.length > 0 ? args[0] : System.getenv("PORT"));
        ServerSocket srv = new ServerSocket(port, 1024, InetAddress.getByName("127.0.0.1"));
        while (true) {
            Socket conn = srv.accept();
            new Thread(() -> serve(conn)).start();
        }
    }

    static void serve(Socket conn) {
        try {
            InputStream in = conn.getInputStream();
            byte[] buf = new byte[4096];
            in.read(buf);
            conn.getOutputStream().write(REPLY);
            while (in.read(buf) >= 0) {
                // drain to the client's FIN
            }
        } catch (IOException e) {
            // the client went away
        }
        SEEN.add(conn); // the bug: no conn.close()
    }
}
